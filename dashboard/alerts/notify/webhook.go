package notify

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Webhook headers and event types.
const (
	HeaderTimestamp   = "X-Fieldhub-Timestamp"
	HeaderSignature   = "X-Fieldhub-Signature"
	HeaderIdempotency = "Idempotency-Key"
	TypeFiring        = "alert.firing"
	TypeResolved      = "alert.resolved"
	// DefaultTolerance is how far a signed timestamp may be from the
	// receiver's clock before Verify refuses it as a replay.
	DefaultTolerance = 5 * time.Minute
	signaturePrefix  = "sha256="
)

// Verify errors, so receivers can tell a replay from a forgery.
var (
	ErrBadSignature    = errors.New("notify: webhook signature does not match")
	ErrStaleTimestamp  = errors.New("notify: webhook timestamp outside the tolerance")
	ErrBadTimestampHdr = errors.New("notify: webhook timestamp is not unix seconds")
)

// WebhookBody is the JSON a webhook receives.
type WebhookBody struct {
	ID     string       `json:"id"`   // the notification key, also the Idempotency-Key header
	Type   string       `json:"type"` // TypeFiring or TypeResolved
	SentAt time.Time    `json:"sent_at"`
	Alert  Notification `json:"alert"`
}

// webhook posts one signed request per delivery.
type webhook struct {
	client  *http.Client
	url     string // never logged
	secret  []byte // never logged
	timeout time.Duration
	lease   time.Duration
	now     func() time.Time
}

// send posts the batch one by one. A receiver-wide failure (down,
// timeout, 5xx) stops it: the rest are untried. So does the lease
// running short, so no other instance claims a delivery we are sending.
func (w *webhook) send(ctx context.Context, started time.Time, batch []Delivery) []result {
	results := make([]result, len(batch))
	for i, d := range batch {
		if ctx.Err() != nil || (i > 0 && w.now().Sub(started) > w.lease-w.timeout-time.Second) {
			break
		}
		body, ts, err := w.encode(d.Notification)
		if err != nil {
			results[i].err = &sendError{msg: "encode: " + err.Error()}
			continue
		}
		h := http.Header{
			"Content-Type":    {"application/json"},
			HeaderIdempotency: {d.Key},
			HeaderTimestamp:   {ts},
			HeaderSignature:   {Sign(w.secret, ts, body)},
		}
		if serr := post(ctx, w.client, w.timeout, w.url, h, body); serr != nil {
			results[i].err = serr
			if serr.receiver {
				break
			}
			continue
		}
		results[i].ok = true
	}
	return results
}

func (w *webhook) encode(n Notification) (body []byte, ts string, err error) {
	now := w.now()
	typ := TypeFiring
	if n.Kind == KindResolved {
		typ = TypeResolved
	}
	body, err = json.Marshal(WebhookBody{ID: n.Key, Type: typ, SentAt: now.UTC().Truncate(time.Millisecond), Alert: n})
	return body, strconv.FormatInt(now.Unix(), 10), err
}

// Sign is the X-Fieldhub-Signature value of body sent at timestamp (unix
// seconds as sent in X-Fieldhub-Timestamp):
// "sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body)).
func Sign(secret []byte, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return signaturePrefix + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a webhook request as a receiver should: the signature
// over timestamp and the raw body, compared in constant time, and a
// timestamp within tolerance of now (0: DefaultTolerance), so a captured
// request cannot be replayed later. Dedupe on Idempotency-Key as well:
// delivery is at least once.
func Verify(secret []byte, timestamp, signature string, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	sec, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return ErrBadTimestampHdr
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return ErrStaleTimestamp
	}
	hexSig, ok := strings.CutPrefix(signature, signaturePrefix)
	if !ok {
		return ErrBadSignature
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return ErrBadSignature
	}
	want, _ := hex.DecodeString(strings.TrimPrefix(Sign(secret, timestamp, body), signaturePrefix))
	if !hmac.Equal(got, want) {
		return ErrBadSignature
	}
	return nil
}
