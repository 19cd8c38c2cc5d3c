package mqtt

// Conformance with Debian's mosquitto command-line clients (mosquitto_pub,
// mosquitto_sub 2.0; scripts/install-mosquitto installs them), run against
// the test broker's loopback address with -d, whose packet log is how these
// tests see CONNACK codes and the QoS 2 handshake.

import (
	"bufio"
	"context"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/bridge"
)

// mosquitto's -V values for the two protocols.
const (
	cliV311 = "mqttv311"
	cliV5   = "mqttv5"
)

// mosquittoArgs prefixes args with the rig's address and -d.
func (r *rig) mosquittoArgs(t *testing.T, args []string) []string {
	t.Helper()
	host, port, err := net.SplitHostPort(r.addr)
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{"-h", host, "-p", port, "-d"}, args...)
}

// mosquitto runs a mosquitto client to its end and returns its output
// (stdout and stderr) and exit error.
func (r *rig) mosquitto(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, r.mosquittoArgs(t, args)...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// cliProc is a mosquitto client running beside the test, its output lines
// read as they come.
type cliProc struct {
	t     *testing.T
	lines chan string // closed at the end of the output
	done  chan error  // the exit error, once
	seen  []string
}

// startMosquitto starts a mosquitto client; it is killed at the end of the
// test if still running.
func (r *rig) startMosquitto(t *testing.T, bin string, args ...string) *cliProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	// Piped, the clients' stdout is block-buffered: coreutils' stdbuf makes
	// it line-buffered, so each packet's debug line comes when it happens.
	cmd := exec.CommandContext(ctx, "stdbuf", append([]string{"-oL", bin}, r.mosquittoArgs(t, args)...)...)
	cmd.WaitDelay = time.Second
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", bin, err)
	}
	p := &cliProc{t: t, lines: make(chan string, 1024), done: make(chan error, 1)}
	go func() { // owner: this test; ends when the process has exited
		err := cmd.Wait()
		pw.Close()
		p.done <- err
	}()
	read := make(chan struct{})
	go func() { // owner: this test; ends at the end of the output (pw.Close above)
		defer close(read)
		defer close(p.lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default: // the test stopped reading: drop
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	t.Cleanup(func() { cancel(); <-read })
	return p
}

// waitLine returns the first line (from now) matching re, failing the test
// if the output ends or patience passes first.
func (p *cliProc) waitLine(re *regexp.Regexp) []string {
	p.t.Helper()
	timeout := time.After(patience)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				p.t.Fatalf("output ended without a line matching %s:\n%s", re, strings.Join(p.seen, "\n"))
			}
			p.seen = append(p.seen, l)
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-timeout:
			p.t.Fatalf("no line matching %s within %s:\n%s", re, patience, strings.Join(p.seen, "\n"))
		}
	}
}

// wait returns the exit error once the process ended.
func (p *cliProc) wait() error {
	p.t.Helper()
	select {
	case err := <-p.done:
		return err
	case <-time.After(patience):
		p.t.Fatalf("still running after %s:\n%s", patience, strings.Join(p.seen, "\n"))
		return nil
	}
}

var (
	reConnack  = regexp.MustCompile(`received CONNACK \((\d+)\)`)
	rePuback   = regexp.MustCompile(`received PUBACK \(Mid: \d+, RC:0\)`)
	rePubackRC = regexp.MustCompile(`received PUBACK \(Mid: (\d+), RC:(\d+)\)`)
	rePubrec   = regexp.MustCompile(`received PUBREC \(Mid: \d+[,)]`)
	rePubrel   = regexp.MustCompile(`sending PUBREL \(m\d+`)
	rePubcomp  = regexp.MustCompile(`received PUBCOMP \(Mid: \d+, RC:0\)`)
	reSubacked = regexp.MustCompile(`^Subscribed \(mid: \d+\): (\d+)`)
)

// TestCLIPublish: mosquitto_pub publishes a reading at QoS 0, 1 and 2 over
// 3.1.1 and 5; QoS 2 completes PUBREC / PUBREL / PUBCOMP; each is stored
// once.
func TestCLIPublish(t *testing.T) {
	r := newRig(t, Options{})
	for _, v := range []string{cliV311, cliV5} {
		for _, qos := range []string{"0", "1", "2"} {
			t.Run(v+"/qos"+qos, func(t *testing.T) {
				want := r.stored(t) + 1
				out, err := r.mosquitto(t, "mosquitto_pub", "-V", v, "-i", "d1", "-u", "d1", "-P", r.tokens["d1"],
					"-t", "devices/d1/telemetry", "-q", qos, "-m", reading)
				if err != nil {
					t.Fatalf("mosquitto_pub: %v\n%s", err, out)
				}
				var steps []*regexp.Regexp
				switch qos {
				case "1":
					steps = []*regexp.Regexp{rePuback}
				case "2":
					steps = []*regexp.Regexp{rePubrec, rePubrel, rePubcomp}
				}
				for _, re := range steps {
					if !re.MatchString(out) {
						t.Fatalf("no %s in:\n%s", re, out)
					}
				}
				if qos == "0" {
					eventually(t, "the QoS 0 reading to be stored", func() bool { return r.stored(t) >= want })
				}
				if n := r.stored(t); n != want {
					t.Fatalf("%d readings stored, want %d", n, want)
				}
			})
		}
	}
}

// TestCLIConnack: the CONNACK codes mosquitto_pub sees: 3.1.1 return codes
// 0-5 only, v5 reason codes.
func TestCLIConnack(t *testing.T) {
	r := newRig(t, Options{})
	tok := r.tokens["d1"]
	tests := []struct {
		name     string
		args     []string
		v311, v5 string
	}{
		{"accepted", []string{"-i", "d1", "-u", "d1", "-P", tok}, "0", "0"},
		{"wrong token", []string{"-i", "d1", "-u", "d1", "-P", "fhd_wrong"}, "5", "134"},
		{"no credentials", []string{"-i", "d1"}, "5", "134"},
		{"client id of another device", []string{"-i", "d2", "-u", "d1", "-P", tok}, "2", "133"},
		{"will on another device's telemetry", []string{"-i", "d1", "-u", "d1", "-P", tok, "--will-topic", "devices/d2/telemetry", "--will-payload", reading}, "5", "135"},
		{"will on own telemetry", []string{"-i", "d1", "-u", "d1", "-P", tok, "--will-topic", "devices/d1/telemetry", "--will-payload", reading, "--will-qos", "1"}, "0", "0"},
	}
	for _, tt := range tests {
		for _, v := range []string{cliV311, cliV5} {
			t.Run(tt.name+"/"+v, func(t *testing.T) {
				want := tt.v311
				if v == cliV5 {
					want = tt.v5
				}
				args := append([]string{"-V", v, "-t", "devices/d1/telemetry", "-q", "1", "-m", reading}, tt.args...)
				out, err := r.mosquitto(t, "mosquitto_pub", args...)
				m := reConnack.FindStringSubmatch(out)
				if m == nil || m[1] != want {
					t.Fatalf("CONNACK %v, want %s:\n%s", m, want, out)
				}
				if (err == nil) != (want == "0") {
					t.Fatalf("exit %v with CONNACK %s:\n%s", err, want, out)
				}
			})
		}
	}
}

// TestCLICommands: mosquitto_sub subscribed to the device's commands
// receives one at QoS 1 and acknowledges it.
func TestCLICommands(t *testing.T) {
	r := newRig(t, Options{})
	for _, v := range []string{cliV311, cliV5} {
		t.Run(v, func(t *testing.T) {
			// A device of its own: the command stays active (awaiting its
			// result) and would be delivered again to the next session.
			dev := "cli-" + v
			tok := r.device(t, dev)
			p := r.startMosquitto(t, "mosquitto_sub", "-V", v, "-i", dev, "-u", dev, "-P", tok,
				"-t", "devices/"+dev+"/commands", "-q", "1", "-C", "1", "-W", "30")
			if m := p.waitLine(reSubacked); m[1] != "1" {
				t.Fatalf("granted QoS %s, want 1", m[1])
			}
			id := r.sendCommand(t, dev, "reboot")
			p.waitLine(regexp.MustCompile(`received PUBLISH \(d0, q1, r0, m\d+, 'devices/` + dev + `/commands'`))
			p.waitLine(regexp.MustCompile(`sending PUBACK`))
			p.waitLine(regexp.MustCompile(regexp.QuoteMeta(id)))
			if err := p.wait(); err != nil {
				t.Fatalf("mosquitto_sub: %v\n%s", err, strings.Join(p.seen, "\n"))
			}
		})
	}
}

// TestCLIWatcher: a developer's mosquitto_sub -i {id}:errors beside the
// publishing device receives the error frame of its invalid reading, and
// the device keeps its connection.
func TestCLIWatcher(t *testing.T) {
	r := newRig(t, Options{})
	tok := r.tokens["d1"]
	lost := make(chan error, 1)
	dev, dtok := r.v3(t, "d1", tok, func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	})
	if dtok.Error() != nil {
		t.Fatal(dtok.Error())
	}
	for _, v := range []string{cliV311, cliV5} {
		t.Run(v, func(t *testing.T) {
			p := r.startMosquitto(t, "mosquitto_sub", "-V", v, "-i", "d1:errors", "-u", "d1", "-P", tok,
				"-t", "devices/d1/errors", "-C", "1", "-W", "30")
			if m := p.waitLine(reConnack); m[1] != "0" {
				t.Fatalf("watcher CONNACK %s", m[1])
			}
			if m := p.waitLine(reSubacked); m[1] != "0" {
				t.Fatalf("watcher granted %s, want QoS 0", m[1])
			}
			if pt := dev.Publish("devices/d1/telemetry", 1, false, `{"metrics":{"temp":null}}`); !pt.WaitTimeout(patience) || pt.Error() != nil {
				t.Fatalf("device publish: %v", pt.Error())
			}
			p.waitLine(regexp.MustCompile(`received PUBLISH \(d0, q0, r0, m\d+, 'devices/d1/errors'`))
			if f := p.waitLine(regexp.MustCompile(`^\{.*\}$`)); !strings.Contains(f[0], `"type":"error"`) || !strings.Contains(f[0], `"code":"invalid"`) || !strings.Contains(f[0], "metrics.temp") {
				t.Fatalf("error frame %s", f[0])
			}
			if err := p.wait(); err != nil {
				t.Fatalf("mosquitto_sub: %v\n%s", err, strings.Join(p.seen, "\n"))
			}
			if pt := dev.Publish("devices/d1/telemetry", 1, false, reading); !pt.WaitTimeout(patience) || pt.Error() != nil {
				t.Fatalf("device publish after the watcher: %v", pt.Error())
			}
			select {
			case err := <-lost:
				t.Fatalf("the device lost its connection to the watcher: %v", err)
			default:
			}
		})
	}
}

// TestCLIRefusals: a QoS 1 reading refused for now (rate limited, spool
// full): mosquitto_pub over 5 gets PUBACK 0x97 Quota exceeded (never 0x96);
// over 3.1.1 no PUBACK at all, and the connection is closed.
func TestCLIRefusals(t *testing.T) {
	tests := []struct {
		name   string
		bridge func(*bridge.Options)
		setup  func(*rig)
		repeat string // publishes; the last one is refused
	}{
		{name: "rate limited", bridge: func(o *bridge.Options) { o.RatePerSec, o.Burst = 0.5, 1 }, repeat: "2"},
		{name: "spool full", setup: func(r *rig) { r.store.refuse.Store(1) }, repeat: "1"},
	}
	for _, tt := range tests {
		for _, v := range []string{cliV311, cliV5} {
			t.Run(tt.name+"/"+v, func(t *testing.T) {
				var bo []func(*bridge.Options)
				if tt.bridge != nil {
					bo = append(bo, tt.bridge)
				}
				r := newRig(t, Options{}, bo...)
				if tt.setup != nil {
					tt.setup(r)
				}
				out, err := r.mosquitto(t, "mosquitto_pub", "-V", v, "-i", "d1", "-u", "d1", "-P", r.tokens["d1"],
					"-t", "devices/d1/telemetry", "-q", "1", "-m", reading, "--repeat", tt.repeat)
				acks := rePubackRC.FindAllStringSubmatch(out, -1)
				n := len(acks)
				if v == cliV5 {
					if n == 0 || acks[n-1][1] != tt.repeat || acks[n-1][2] != "151" {
						t.Fatalf("PUBACKs %v, want the last (%s) with RC 151 (0x97):\n%s", acks, tt.repeat, out)
					}
				} else {
					for _, a := range acks {
						if a[1] == tt.repeat {
							t.Fatalf("PUBACK for the refused publish:\n%s", out)
						}
					}
					if err == nil || !strings.Contains(out, "The connection was lost") {
						t.Fatalf("exit %v, want the connection closed:\n%s", err, out)
					}
				}
				want, _ := strconv.Atoi(tt.repeat)
				if got := r.stored(t); got != want-1 {
					t.Fatalf("%d readings stored, want %d", got, want-1)
				}
			})
		}
	}
}
