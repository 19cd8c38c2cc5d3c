// Package influxtest starts a private, real InfluxDB server for tests: the
// pinned influxd (installed into ./bin by scripts/install-influxd when
// missing) on free loopback ports, with its own temporary data directory.
// Every test that needs InfluxDB uses it; there are no mocks of InfluxDB.
//
// Start gives a test an influxd of its own (for tests that stop, kill or
// restart it); Shared gives every test of a package its own database on one
// influxd started for the whole test binary, which is what keeps a package
// of sixty end-to-end tests from starting sixty servers.
package influxtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Database is the database every test server creates; with the autogen
// retention policy it is the InfluxDB 2 bucket "telemetry/autogen".
const Database = "telemetry"

// Server is one running influxd.
type Server struct {
	// URL is the HTTP base URL, e.g. http://127.0.0.1:40123.
	URL string
	// Bucket is the InfluxDB 2-style bucket name for the write/query APIs.
	Bucket string
	// DB is the InfluxDB 1 database behind Bucket: Database for a server
	// of its own, a database of the test's own on a Shared server.
	DB string

	t        testing.TB
	shared   bool // a view of a Shared server: Stop, Kill and Restart refuse
	bin, dir string
	httpAddr string
	cmd      *exec.Cmd
	exited   chan struct{}
	logFile  *os.File
}

// Start starts a fresh influxd and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary(t)
	s := &Server{t: t, bin: bin, dir: t.TempDir(), Bucket: Database + "/autogen", DB: Database}
	if err := s.startRetrying(); err != nil {
		t.Fatalf("start influxd: %v", err)
	}
	t.Cleanup(s.Stop)
	s.Exec("CREATE DATABASE " + Database)
	return s
}

func (s *Server) startRetrying() error {
	var err error
	for range 3 { // a free port can be taken between probe and bind; try again
		if err = s.startFresh(); err == nil {
			return nil
		}
	}
	return err
}

// Shared is one influxd shared by the tests of one test binary, each test
// in a database of its own, so tests stay independent without paying for
// a server start each. The zero value is ready: the server starts on the
// first Database call. The package's TestMain calls Close after m.Run.
// Tests that stop, kill or restart influxd use Start instead.
type Shared struct {
	mu   sync.Mutex // guards the fields below; held across the first start only
	srv  *Server
	err  error
	next int // databases handed out so far
}

// Database returns a view of the shared influxd bound to t, with a fresh
// database created for t and dropped when t ends. Stop, Kill and Restart
// on the view fail the test: they would take the server from every other
// test.
func (sh *Shared) Database(t testing.TB) *Server {
	t.Helper()
	sh.mu.Lock()
	if sh.srv == nil && sh.err == nil {
		sh.srv, sh.err = startShared()
	}
	srv, err := sh.srv, sh.err
	sh.next++
	n := sh.next
	sh.mu.Unlock()
	if err != nil {
		t.Fatalf("start shared influxd: %v", err)
	}
	db := fmt.Sprintf("%s_%d", Database, n)
	v := &Server{URL: srv.URL, Bucket: db + "/autogen", DB: db, t: t, shared: true, httpAddr: srv.httpAddr}
	v.Exec("CREATE DATABASE " + db)
	t.Cleanup(func() { _, _ = v.query("DROP DATABASE " + db) })
	return v
}

// Close stops the shared influxd, if it was started, and removes its data.
func (sh *Shared) Close() {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.srv != nil {
		sh.srv.Stop()
		_ = os.RemoveAll(sh.srv.dir)
		sh.srv = nil
	}
}

func startShared() (*Server, error) {
	bin, err := binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "influxtest-shared-")
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	s := &Server{bin: bin, dir: dir, Bucket: Database + "/autogen", DB: Database}
	if err := s.startRetrying(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *Server) startFresh() error {
	httpAddr, err := freeAddr()
	if err != nil {
		return err
	}
	rpcAddr, err := freeAddr()
	if err != nil {
		return err
	}
	s.httpAddr = httpAddr
	s.URL = "http://" + httpAddr
	conf := fmt.Sprintf(`reporting-disabled = true
bind-address = %q
[meta]
  dir = %q
[data]
  dir = %q
  wal-dir = %q
  query-log-enabled = false
[http]
  bind-address = %q
  flux-enabled = true
  log-enabled = false
[logging]
  level = "warn"
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
`, rpcAddr, filepath.Join(s.dir, "meta"), filepath.Join(s.dir, "data"), filepath.Join(s.dir, "wal"), httpAddr)
	if err := os.WriteFile(filepath.Join(s.dir, "influxdb.conf"), []byte(conf), 0o600); err != nil {
		return err
	}
	return s.launch()
}

func (s *Server) launch() error {
	logFile, err := os.OpenFile(filepath.Join(s.dir, "influxd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, "run", "-config", filepath.Join(s.dir, "influxdb.conf"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// influxd must not outlive a test binary that crashes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	s.cmd, s.logFile, s.exited = cmd, logFile, make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.exited) }()
	if err := s.waitHealthy(healthyWait); err != nil {
		s.Stop()
		log, _ := os.ReadFile(filepath.Join(s.dir, "influxd.log"))
		return fmt.Errorf("%w; log:\n%s", err, tail(log, 2000))
	}
	return nil
}

// healthyWait is how long a launch waits for influxd to answer /health:
// generous, because tests run beside others on a loaded machine (where 30
// s was seen to be too short), and the wait ends as soon as it answers.
const healthyWait = 2 * time.Minute

func (s *Server) waitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return errors.New("influxd exited during start")
		default:
		}
		resp, err := http.Get(s.URL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("influxd not healthy on %s after %s", s.httpAddr, timeout)
}

// Stop stops influxd and waits for it to exit. It is safe to call twice.
func (s *Server) Stop() {
	s.refuseShared("Stop")
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.logFile.Close()
	s.cmd = nil
}

// Kill stops influxd with SIGKILL, as a crash would.
func (s *Server) Kill() {
	s.refuseShared("Kill")
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.logFile.Close()
	s.cmd = nil
}

// Restart starts influxd again on the same port and data after Stop, as an
// operator would after an outage.
func (s *Server) Restart() {
	s.t.Helper()
	s.refuseShared("Restart")
	var err error
	for range 20 { // the old socket may linger briefly
		if err = s.launch(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("restart influxd: %v", err)
}

// refuseShared fails the test when s is a view of a Shared server.
func (s *Server) refuseShared(op string) {
	if s.shared {
		s.t.Helper()
		s.t.Fatalf("influxtest: %s on a shared influxd; use influxtest.Start for a test that stops it", op)
	}
}

// Exec runs an InfluxQL statement that returns no rows.
func (s *Server) Exec(q string) {
	s.t.Helper()
	if _, err := s.query(q); err != nil {
		s.t.Fatalf("influxql %q: %v", q, err)
	}
}

// Count returns how many points of measurement telemetry, field field, the
// device has in the server's database.
func (s *Server) Count(device, field string) (int, error) {
	rows, err := s.query(fmt.Sprintf(`SELECT count(%q) FROM "telemetry" WHERE "device" = '%s'`, field, strings.ReplaceAll(device, `'`, `\'`)))
	if err != nil {
		return 0, err
	}
	if len(rows) == 0 {
		return 0, nil
	}
	n, ok := rows[0][1].(float64)
	if !ok {
		return 0, fmt.Errorf("count row %v", rows[0])
	}
	return int(n), nil
}

// Query runs an InfluxQL query in the server's database and returns the
// rows of its first series.
func (s *Server) Query(q string) ([][]any, error) { return s.query(q) }

func (s *Server) query(q string) ([][]any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	form := url.Values{"q": {q}, "db": {s.DB}, "epoch": {"ms"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/query", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	var out struct {
		Results []struct {
			Error  string
			Series []struct {
				Values [][]any
			}
		}
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, err
	}
	if len(out.Results) == 0 {
		return nil, nil
	}
	if out.Results[0].Error != "" {
		return nil, errors.New(out.Results[0].Error)
	}
	if len(out.Results[0].Series) == 0 {
		return nil, nil
	}
	return out.Results[0].Series[0].Values, nil
}

// Binary returns the path of the pinned influxd, installing it when missing.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func binary() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "install-influxd"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("install influxd: %w\n%s", err, out)
	}
	return filepath.Join(root, "bin", "influxd"), nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
