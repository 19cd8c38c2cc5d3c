package hijack

import (
	"slices"
	"testing"
	"time"
)

func TestConns(t *testing.T) {
	var s Conns[int]
	if s.Closing() {
		t.Fatal("closing before Close")
	}
	if !s.Add(1) || !s.Add(2) {
		t.Fatal("Add refused before Close")
	}
	s.Done(1)
	open := s.Close()
	if !slices.Equal(open, []int{2}) {
		t.Fatalf("Close returned %v, want [2]", open)
	}
	if !s.Closing() {
		t.Fatal("not closing after Close")
	}
	if s.Add(3) {
		t.Fatal("Add accepted after Close")
	}
	waited := make(chan struct{})
	go func() { // owner: this test; it waits on waited
		s.Wait()
		close(waited)
	}()
	select {
	case <-waited:
		t.Fatal("Wait returned with a connection open")
	case <-time.After(50 * time.Millisecond): // a short look for a wrong early return, not synchronisation
	}
	s.Done(2)
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the last Done")
	}
	if got := s.Close(); len(got) != 0 {
		t.Fatalf("second Close returned %v", got)
	}
}
