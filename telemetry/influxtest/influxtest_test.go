package influxtest

import (
	"bytes"
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
