// Package alertmanagertest starts a private, real Prometheus Alertmanager
// for tests: Debian's prometheus-alertmanager (scripts/install-alertmanager
// installs it) on a free loopback port, with a configuration and storage
// directory of its own under t.TempDir(), clustering off, and one webhook
// receiver the test runs (usually an httptest server), so a test sees what
// Alertmanager would send on to email, Slack or PagerDuty.
//
// It imports only the standard library.
package alertmanagertest

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

const (
	binary       = "/usr/bin/prometheus-alertmanager"
	startTimeout = 20 * time.Second
)

// Options shape the test Alertmanager's configuration. Zero values are
// short timings that suit tests: group_wait 100ms, group_interval 500ms,
// repeat_interval 1h, resolve_timeout 5m.
type Options struct {
	// ReceiverURL is the webhook_configs url of the only receiver, with
	// send_resolved true. Required.
	ReceiverURL string
	// ResolveTimeout is global.resolve_timeout: an alert posted without
	// endsAt and not posted again within it resolves.
	ResolveTimeout time.Duration
	GroupWait      time.Duration
	GroupInterval  time.Duration
	RepeatInterval time.Duration
}

// Alertmanager is one running prometheus-alertmanager.
type Alertmanager struct {
	// URL is its base URL (http://127.0.0.1:port), what
	// FIELDHUB_ALERTMANAGER_URL would be.
	URL string

	dir    string
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start starts a fresh Alertmanager, waits until it is ready and stops it
// when the test ends.
func Start(t testing.TB, o Options) *Alertmanager {
	t.Helper()
	if _, err := os.Stat(binary); err != nil {
		t.Fatalf("%s is missing: run scripts/install-alertmanager", binary)
	}
	if o.ReceiverURL == "" {
		t.Fatal("alertmanagertest: Options.ReceiverURL is required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.ResolveTimeout, 5*time.Minute)
	def(&o.GroupWait, 100*time.Millisecond)
	def(&o.GroupInterval, 500*time.Millisecond)
	def(&o.RepeatInterval, time.Hour)
	am := &Alertmanager{dir: t.TempDir()}
	conf := fmt.Sprintf(`global:
  resolve_timeout: %s
route:
  receiver: test
  group_by: ['alertname', 'device']
  group_wait: %s
  group_interval: %s
  repeat_interval: %s
receivers:
- name: test
  webhook_configs:
  - url: %q
    send_resolved: true
`, dur(o.ResolveTimeout), dur(o.GroupWait), dur(o.GroupInterval), dur(o.RepeatInterval), o.ReceiverURL)
	if err := os.WriteFile(filepath.Join(am.dir, "alertmanager.yml"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	for range 3 { // a free port can be taken between probe and bind
		if err = am.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("start alertmanager: %v", err)
	}
	t.Cleanup(am.Stop)
	return am
}

// dur writes d in Prometheus's duration syntax, which has no fractions.
func dur(d time.Duration) string {
	return fmt.Sprintf("%dms", d.Milliseconds())
}

func (am *Alertmanager) start() error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	am.URL = "http://" + addr
	cmd := exec.Command(binary,
		"--config.file="+filepath.Join(am.dir, "alertmanager.yml"),
		"--storage.path="+filepath.Join(am.dir, "data"),
		"--web.listen-address="+addr,
		"--cluster.listen-address=", // no gossip port, no peers
		"--log.level=warn",
	)
	logf, err := os.Create(filepath.Join(am.dir, "alertmanager.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	am.cmd, am.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(am.exited) }()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-am.exited:
			am.cmd = nil
			return fmt.Errorf("alertmanager exited during start; log:\n%s", am.Log())
		default:
		}
		if resp, err := client.Get(am.URL + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	am.Stop()
	return fmt.Errorf("alertmanager not ready on %s after %s; log:\n%s", addr, startTimeout, am.Log())
}

// Log returns Alertmanager's log so far.
func (am *Alertmanager) Log() string {
	out, _ := os.ReadFile(filepath.Join(am.dir, "alertmanager.log"))
	return string(out)
}

// Stop stops Alertmanager and waits for it. It is safe to call twice.
func (am *Alertmanager) Stop() {
	if am.cmd == nil {
		return
	}
	_ = am.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-am.exited:
	case <-time.After(5 * time.Second):
		_ = am.cmd.Process.Kill()
		<-am.exited
	}
	am.cmd = nil
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
