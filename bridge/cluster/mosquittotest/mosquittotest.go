// Package mosquittotest starts a private, real Mosquitto 2 broker for tests:
// Debian's mosquitto (scripts/install-mosquitto installs it) on a free
// loopback port, with its own configuration, persistence directory and
// the dynamic-security plugin, set up the way docs/deploy.md tells
// operators to: an admin client from `mosquitto_ctrl dynsec init`, and a
// "fieldhub" client with the hub's role created with mosquitto_ctrl.
package mosquittotest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Credentials of the clients every test broker has.
const (
	AdminUser    = "admin"
	AdminPass    = "admin-test-password"
	HubUser      = "fieldhub"
	HubPass      = "hub-test-password"
	hubRole      = "fieldhub-hub"
	pluginGlob   = "/usr/lib/*/mosquitto_dynamic_security.so"
	startTimeout = 10 * time.Second
)

// HubACLs are the hub's broker permissions, as docs/deploy.md lists them
// (mosquitto_ctrl dynsec addRoleACL fieldhub-hub <type> <topic> allow).
var HubACLs = [][2]string{
	{"subscribePattern", "$share/fieldhub/devices/+/telemetry"},
	{"subscribePattern", "$share/fieldhub/devices/+/commands/result"},
	{"subscribePattern", "$share/fieldhub/devices/+/state/reported"},
	{"subscribePattern", "devices/+/commands"},
	{"subscribePattern", "fieldhub/#"},
	{"subscribePattern", "$CONTROL/dynamic-security/#"},
	{"publishClientReceive", "devices/#"},
	{"publishClientReceive", "fieldhub/#"},
	{"publishClientReceive", "$CONTROL/dynamic-security/#"},
	{"publishClientSend", "devices/+/commands"},
	{"publishClientSend", "devices/+/errors"},
	{"publishClientSend", "devices/+/state/desired"},
	{"publishClientSend", "fieldhub/#"},
	{"publishClientSend", "$CONTROL/dynamic-security/#"},
}

// Options changes what a test broker offers.
type Options struct {
	// TLS adds a second listener with TLS that requires a client
	// certificate, as a broker reachable beyond one network would. Its
	// files are in Broker.TLS.
	TLS bool
	// Anonymous is a plain broker instead: no dynamic-security plugin and
	// no clients, anyone may connect without credentials, as the peer
	// pipeline of scripts/bench-peer runs it. Excludes TLS.
	Anonymous bool
}

// TLSFiles are the PEM files of a test broker's TLS listener: the CA
// that signed both the broker's certificate and a client certificate for
// the hub.
type TLSFiles struct {
	CA         string
	ClientCert string
	ClientKey  string
}

// Broker is one running mosquitto.
type Broker struct {
	// Addr is host:port; URL is tcp://Addr for paho.
	Addr string
	URL  string
	// TLSURL is ssl://host:port of the TLS listener, with Options.TLS.
	TLSURL string
	TLS    TLSFiles

	t         testing.TB
	dir       string
	mosquitto string
	ctrlBin   string
	cmd       *exec.Cmd
	exited    chan struct{}
	tls       bool
	anonymous bool
}

// Start starts a fresh broker and stops it when the test ends.
func Start(t testing.TB) *Broker {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, o Options) *Broker {
	t.Helper()
	plugins, _ := filepath.Glob(pluginGlob)
	if len(plugins) == 0 {
		t.Fatalf("mosquitto's dynamic-security plugin (%s) is missing: run scripts/install-mosquitto", pluginGlob)
	}
	if o.Anonymous && o.TLS {
		t.Fatal("mosquittotest: an anonymous broker has no TLS listener")
	}
	b := &Broker{t: t, dir: t.TempDir(), tls: o.TLS, anonymous: o.Anonymous}
	if o.TLS {
		var err error
		if b.TLS, err = writeCerts(b.dir); err != nil {
			t.Fatalf("TLS certificates for mosquitto: %v", err)
		}
	}
	var err error
	if b.mosquitto, err = lookPath("mosquitto"); err != nil {
		t.Fatal("mosquitto is missing: run scripts/install-mosquitto")
	}
	if b.ctrlBin, err = lookPath("mosquitto_ctrl"); err != nil {
		t.Fatal("mosquitto_ctrl is missing: run scripts/install-mosquitto")
	}
	dynsec := filepath.Join(b.dir, "dynamic-security.json")
	if !b.anonymous {
		if out, err := exec.Command(b.ctrlBin, "dynsec", "init", dynsec, AdminUser, AdminPass).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_ctrl dynsec init: %v\n%s", err, out)
		}
	}
	for range 3 { // a free port can be taken between probe and bind
		if err = b.launch(plugins[0], dynsec); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	t.Cleanup(b.Stop)
	if b.anonymous {
		return b
	}
	b.ctrl("createRole", hubRole)
	for _, acl := range HubACLs {
		b.ctrl("addRoleACL", hubRole, acl[0], acl[1], "allow")
	}
	b.ctrl("createClient", HubUser, "-p", HubPass)
	b.ctrl("addClientRole", HubUser, hubRole)
	return b
}

func (b *Broker) launch(plugin, dynsec string) error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	b.Addr = addr
	b.URL = "tcp://" + b.Addr
	_, port, _ := net.SplitHostPort(b.Addr)
	// The queue and in-flight limits are raised as docs/deploy.md says:
	// at their defaults (1000, 20) Mosquitto drops QoS 1 messages for a
	// busy subscriber without telling anyone.
	// Started as root, mosquitto switches to the user "mosquitto", which
	// cannot use the test's private directory: stay who we are.
	me, err := user.Current()
	if err != nil {
		return err
	}
	security := fmt.Sprintf("allow_anonymous false\nplugin %s\nplugin_opt_config_file %s", plugin, dynsec)
	if b.anonymous {
		security = "allow_anonymous true"
	}
	conf := fmt.Sprintf(`per_listener_settings false
user %s
listener %s 127.0.0.1
%s
persistence true
persistence_location %s/
autosave_interval 1
max_inflight_messages 1000
max_queued_messages 1000000
max_queued_bytes 0
max_packet_size 1048576
log_dest file %s
log_type error
log_type warning
log_type notice
log_type information
`, me.Username, port, security, b.dir, filepath.Join(b.dir, "mosquitto.log"))
	if b.tls {
		tlsAddr, err := freeAddr()
		if err != nil {
			return err
		}
		b.TLSURL = "ssl://" + tlsAddr
		_, tlsPort, _ := net.SplitHostPort(tlsAddr)
		// Listener settings follow their listener line.
		conf += fmt.Sprintf(`listener %s 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
`, tlsPort, b.TLS.CA, filepath.Join(b.dir, "server.pem"), filepath.Join(b.dir, "server-key.pem"))
	}
	if err := os.WriteFile(filepath.Join(b.dir, "mosquitto.conf"), []byte(conf), 0o600); err != nil {
		return err
	}
	return b.start()
}

// start runs mosquitto with the configuration in the broker's directory
// and waits until it listens.
func (b *Broker) start() error {
	cmd := exec.Command(b.mosquitto, "-c", filepath.Join(b.dir, "mosquitto.conf"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	b.cmd, b.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(b.exited) }()
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-b.exited:
			return fmt.Errorf("mosquitto exited during start; log:\n%s", b.Log())
		default:
		}
		if c, err := net.DialTimeout("tcp", b.Addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Stop()
	return fmt.Errorf("mosquitto not listening on %s after %s", b.Addr, startTimeout)
}

// ctrl runs one mosquitto_ctrl dynsec command as the admin.
func (b *Broker) ctrl(args ...string) {
	b.t.Helper()
	host, port, _ := net.SplitHostPort(b.Addr)
	full := append([]string{"-h", host, "-p", port, "-u", AdminUser, "-P", AdminPass, "dynsec"}, args...)
	out, err := exec.Command(b.ctrlBin, full...).CombinedOutput()
	if err != nil || strings.Contains(strings.ToLower(string(out)), "error") {
		b.t.Fatalf("mosquitto_ctrl dynsec %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Log returns the broker's log so far.
func (b *Broker) Log() string {
	out, _ := os.ReadFile(filepath.Join(b.dir, "mosquitto.log"))
	return string(out)
}

// Restart stops the broker and starts it again on the same address with
// what it persisted: sessions, queued messages, dynamic-security clients.
func (b *Broker) Restart() {
	b.t.Helper()
	b.Stop()
	var err error
	for range 50 { // the port may linger for a moment after the stop
		if err = b.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.t.Fatalf("restart mosquitto: %v", err)
}

// Stop stops the broker and waits for it. It is safe to call twice.
func (b *Broker) Stop() {
	if b.cmd == nil {
		return
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
	case <-time.After(5 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.exited
	}
	b.cmd = nil
}

func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} { // mosquitto lives in sbin, often off PATH
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// freeAddr returns a loopback address nothing listens on now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// PID is the broker process's id, for tests that measure its CPU.
func (b *Broker) PID() int { return b.cmd.Process.Pid }
