package commands

import (
	"encoding/json"
	"time"
)

// Command statuses. queued -> sent -> succeeded | failed | timed_out;
// queued -> expired | cancelled.
const (
	Queued    = "queued"
	Sent      = "sent"
	Succeeded = "succeeded"
	Failed    = "failed"
	TimedOut  = "timed_out"
	Expired   = "expired"
	Cancelled = "cancelled"
)

// FinalStatuses lists the statuses a command cannot leave, in a fixed
// order (metrics).
var FinalStatuses = [...]string{Succeeded, Failed, TimedOut, Expired, Cancelled}

// Spec is an operator's request to send a command.
type Spec struct {
	Device         string
	Name           string
	Params         json.RawMessage
	TTL            time.Duration // how long it may wait for delivery; default 1 h
	Timeout        time.Duration // how long a sent command may wait for its result; default 30 s
	CreatedBy      string
	IdempotencyKey string
}

// StatusChange is one step of a command's audit trail.
type StatusChange struct {
	Status string    `json:"status"`
	At     time.Time `json:"at"`
}

// Record is a command to a device with its delivery history. Who sent
// what, when, and what became of it is kept (audit). Its JSON form is
// what both stores keep (bbolt value, PostgreSQL jsonb) and what the
// API answers: it must not change.
type Record struct {
	ID          string          `json:"id"`
	Device      string          `json:"device"`
	Name        string          `json:"name"`
	Params      json.RawMessage `json:"params"`
	Status      string          `json:"status"`
	CreatedAt   time.Time       `json:"created_at"`
	CreatedBy   string          `json:"created_by"`
	ExpiresAt   time.Time       `json:"expires_at"`
	TimeoutMS   int64           `json:"timeout_ms"`
	SentAt      *time.Time      `json:"sent_at,omitempty"`
	CompletedAt *time.Time      `json:"completed_at,omitempty"`
	Deliveries  int             `json:"deliveries"`
	// PolledAt is when the device took the command over the HTTP long
	// poll, which must hand each command out once.
	PolledAt       *time.Time      `json:"polled_at,omitempty"`
	Result         json.RawMessage `json:"result,omitempty"`
	Error          string          `json:"error,omitempty"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
	History        []StatusChange  `json:"history"`
}

// Final reports whether the command's status can no longer change.
func (c *Record) Final() bool {
	switch c.Status {
	case Queued, Sent:
		return false
	}
	return true
}

// MaxKept bounds the commands a Store keeps per device; the oldest final
// ones are deleted first.
const MaxKept = 1000
