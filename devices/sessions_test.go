package devices

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

type endLog struct {
	mu   sync.Mutex
	ends []OperatorEnded
}

func (l *endLog) add(e OperatorEnded) { l.mu.Lock(); l.ends = append(l.ends, e); l.mu.Unlock() }
func (l *endLog) has(reason string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.ends {
		if e.Reason == reason {
			return true
		}
	}
	return false
}

// TestSessionLifecycle: a session authenticates as its token, ends on
// sign-out, on revocation of its token and at its idle and absolute
// expiry, each end announced; it survives a reopen of the store.
func TestSessionLifecycle(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	tests := []struct {
		name      string
		idle, max time.Duration
		end       func(r *Registry, sid, tokenID string)
		reason    string
	}{
		{"sign-out", time.Hour, time.Hour, func(r *Registry, sid, _ string) { _ = r.DeleteSession(ctx, sid) }, "signed_out"},
		{"token revoked", time.Hour, time.Hour, func(r *Registry, _, id string) { _ = r.RevokeOperatorToken(ctx, id) }, "revoked"},
		{"idle", 300 * time.Millisecond, time.Hour, func(*Registry, string, string) {}, "expired"},
		{"absolute", time.Hour, 300 * time.Millisecond, func(*Registry, string, string) {}, "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log endLog
			r := openRegistry(t, filepath.Join(t.TempDir(), "r.db"), Options{SessionIdle: tt.idle, SessionMax: tt.max, OnOperatorEnded: log.add})
			tok, secret, err := r.CreateOperatorToken(ctx, "ops", RoleViewer)
			if err != nil {
				t.Fatal(err)
			}
			op, _ := r.AuthenticateOperator(ctx, secret)
			sid, err := r.CreateSession(ctx, op)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := r.AuthenticateSession(ctx, sid)
			if !ok || got.TokenID != tok.ID || got.Name != "ops" || got.Session == "" || !r.OperatorActive(got) {
				t.Fatalf("session authenticates as %+v %v", got, ok)
			}
			if _, ok := r.AuthenticateSession(ctx, secret); ok {
				t.Fatal("the token works as a session id")
			}
			tt.end(r, sid, tok.ID)
			deadline := time.Now().Add(10 * time.Second)
			for !log.has(tt.reason) {
				if time.Now().After(deadline) {
					t.Fatalf("no %q end announced: %+v", tt.reason, log.ends)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if _, ok := r.AuthenticateSession(ctx, sid); ok || r.OperatorActive(got) {
				t.Fatal("the session still works after its end")
			}
		})
	}

	t.Run("survives reopen", func(t *testing.T) {
		st, err := OpenBolt(path)
		if err != nil {
			t.Fatal(err)
		}
		r, err := Open(ctx, st, Options{})
		if err != nil {
			t.Fatal(err)
		}
		_, secret, _ := r.CreateOperatorToken(ctx, "ops", RoleViewer)
		op, _ := r.AuthenticateOperator(ctx, secret)
		sid, _ := r.CreateSession(ctx, op)
		r.Close()
		st.Close()
		r2 := openRegistry(t, path, Options{})
		if got, ok := r2.AuthenticateSession(ctx, sid); !ok || got.Name != "ops" {
			t.Fatalf("after reopen: %+v %v", got, ok)
		}
	})

	t.Run("bounded per token", func(t *testing.T) {
		var log endLog
		r := openRegistry(t, filepath.Join(t.TempDir(), "r.db"), Options{OnOperatorEnded: log.add})
		_, secret, _ := r.CreateOperatorToken(ctx, "ops", RoleViewer)
		op, _ := r.AuthenticateOperator(ctx, secret)
		first, _ := r.CreateSession(ctx, op)
		for range MaxSessionsPerToken {
			if _, err := r.CreateSession(ctx, op); err != nil {
				t.Fatal(err)
			}
		}
		if _, ok := r.AuthenticateSession(ctx, first); ok || !log.has("evicted") {
			t.Fatal("the oldest session survived a sign-in past the bound")
		}
		r.mu.RLock()
		n := len(r.sessions)
		r.mu.RUnlock()
		if n != MaxSessionsPerToken {
			t.Fatalf("%d sessions kept, want %d", n, MaxSessionsPerToken)
		}
	})
}
