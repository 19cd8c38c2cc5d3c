package bridge

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// storeDeadline is a connected session's reusable bound on one store
// append: the context the store sees, done StoreTimeout after arm or as
// soon as the caller's context is done, whichever comes first: what
// context.WithTimeout(parent, StoreTimeout) gives, without its context,
// channel and timer per message. Between appends its timer is stopped and
// reset, its channel reused until one closes, and the caller's context is
// watched once (context.AfterFunc) for as long as the session passes the
// same one.
//
// One append at a time uses it (busy); a session used by several
// goroutines at once falls back to context.WithTimeout for the others.
// The zero value is ready to use.
type storeDeadline struct {
	busy atomic.Bool // held from arm to disarm

	// mu guards the fields below. It is held only for these field
	// updates and the channel close: never across the store call, and
	// nothing else is taken under it (the timer and watch callbacks take
	// it alone).
	mu       sync.Mutex
	parent   context.Context // the caller's context of the current append
	deadline time.Time
	armed    bool
	done     chan struct{} // closed when err is set; replaced by the next arm once closed
	err      error
	timer    *time.Timer // nil until first use, and after a Stop that lost to the timer
	// watchedDone is the Done channel of the caller's context that watch
	// (context.AfterFunc) is registered on; nil when none.
	watchedDone <-chan struct{}
	stopWatch   func() bool
	released    bool // the session ended: no watch outlives an append
}

// arm starts the bound of one append under parent and reports whether it
// did; false means another append of the session holds it.
func (d *storeDeadline) arm(parent context.Context, timeout time.Duration) bool {
	if !d.busy.CompareAndSwap(false, true) {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done == nil || d.err != nil {
		d.done, d.err = make(chan struct{}), nil
	}
	d.parent, d.armed = parent, true
	d.deadline = time.Now().Add(timeout)
	if pd, ok := parent.Deadline(); ok && pd.Before(d.deadline) {
		d.deadline = pd
	}
	if pdone := parent.Done(); pdone != d.watchedDone {
		d.unwatchLocked()
		if pdone != nil {
			d.watchedDone = pdone
			d.stopWatch = context.AfterFunc(parent, func() { d.parentDone(pdone) })
		}
	}
	if err := parent.Err(); err != nil {
		d.expireLocked(err)
		return true
	}
	if d.timer == nil {
		var t *time.Timer
		t = time.AfterFunc(timeout, func() { d.fire(&t) }) // fire reads t under mu, which is held until t is set
		d.timer = t
	} else {
		d.timer.Reset(timeout)
	}
	return true
}

// disarm ends the bound of the append arm started.
func (d *storeDeadline) disarm() {
	d.mu.Lock()
	d.armed = false
	if d.timer != nil && !d.timer.Stop() {
		d.timer = nil // it fired or is firing: its callback finds it is no longer d.timer
	}
	if d.released {
		d.unwatchLocked()
	}
	d.mu.Unlock()
	d.busy.Store(false)
}

// release stops watching the caller's context once no append runs, so a
// long-lived context does not keep an ended session's callback.
func (d *storeDeadline) release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.released = true
	if !d.armed {
		d.unwatchLocked()
	}
}

func (d *storeDeadline) unwatchLocked() {
	if d.stopWatch != nil {
		d.stopWatch()
	}
	d.watchedDone, d.stopWatch = nil, nil
}

// fire is the callback of timer *t: the append took StoreTimeout.
func (d *storeDeadline) fire(t **time.Timer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer == *t && d.armed && d.err == nil {
		d.expireLocked(context.DeadlineExceeded)
	}
}

// parentDone is the watch's callback: the caller's context whose Done is
// pdone ended.
func (d *storeDeadline) parentDone(pdone <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.armed && d.err == nil && pdone == d.watchedDone {
		if err := d.parent.Err(); err != nil {
			d.expireLocked(err)
		}
	}
}

func (d *storeDeadline) expireLocked(err error) {
	d.err = err
	close(d.done)
}

// Deadline implements context.Context.
func (d *storeDeadline) Deadline() (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.deadline, true
}

// Done implements context.Context.
func (d *storeDeadline) Done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.done
}

// Err implements context.Context: context.DeadlineExceeded after
// StoreTimeout, the caller's context's error once it is done.
func (d *storeDeadline) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// Value implements context.Context: the caller's values.
func (d *storeDeadline) Value(key any) any {
	d.mu.Lock()
	p := d.parent
	d.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Value(key)
}
