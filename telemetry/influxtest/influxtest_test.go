package influxtest

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"
)

func TestStartWriteCountRestart(t *testing.T) {
	s := Start(t)
	write := func() {
		t.Helper()
		resp, err := http.Post(s.URL+"/api/v2/write?bucket="+s.Bucket+"&precision=ms", "text/plain",
			bytes.NewBufferString("telemetry,device=d1 temp=1 1795000000000\ntelemetry,device=d1 temp=2 1795000000001\n"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("write status %d", resp.StatusCode)
		}
	}
	write()
	if n, err := s.Count("d1", "temp"); err != nil || n != 2 {
		t.Fatalf("count = %d, %v; want 2", n, err)
	}
	s.Stop()
	if _, err := s.Count("d1", "temp"); err == nil {
		t.Fatal("query succeeded while influxd was stopped")
	}
	s.Restart()
	if n, err := s.Count("d1", "temp"); err != nil || n != 2 {
		t.Fatalf("after restart count = %d, %v; want 2", n, err)
	}
}

// TestSharedDatabasesIndependent checks that two tests on one Shared
// influxd see only their own points, and that a view refuses to stop the
// server the other tests use.
func TestSharedDatabasesIndependent(t *testing.T) {
	var sh Shared
	defer sh.Close()
	a, b := sh.Database(t), sh.Database(t)
	if a.URL != b.URL || a.DB == b.DB || a.Bucket == b.Bucket {
		t.Fatalf("views %q/%q and %q/%q: want one server, two databases", a.URL, a.DB, b.URL, b.DB)
	}
	resp, err := http.Post(a.URL+"/api/v2/write?bucket="+a.Bucket+"&precision=ms", "text/plain",
		bytes.NewBufferString("telemetry,device=d1 temp=1 1795000000000\n"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("write status %d", resp.StatusCode)
	}
	if n, err := a.Count("d1", "temp"); err != nil || n != 1 {
		t.Fatalf("own database count = %d, %v; want 1", n, err)
	}
	if n, err := b.Count("d1", "temp"); err != nil || n != 0 {
		t.Fatalf("other database count = %d, %v; want 0", n, err)
	}
	rec := &fatalRecorder{TB: t}
	v := &Server{t: rec, shared: true}
	v.Kill()
	if rec.msg == "" {
		t.Fatal("Kill on a shared view did not fail the test")
	}
	if n, err := b.Count("d1", "temp"); err != nil || n != 0 {
		t.Fatalf("shared server gone after refused Kill: %d, %v", n, err)
	}
}

// fatalRecorder records Fatalf instead of ending the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper()                   {}
func (r *fatalRecorder) Fatalf(f string, a ...any) { r.msg = fmt.Sprintf(f, a...) }
