package notify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
)

// sendError is a failed request, described without the URL (it may
// carry credentials) so it can be logged and stored as LastError.
type sendError struct {
	status int    // the receiver's HTTP status, 0 if none
	msg    string // safe to log
	// receiver reports a failure of the receiver rather than of this one
	// notification (down, timeout, 5xx, 429, redirect): the rest of the
	// batch is not tried.
	receiver bool
}

func (e *sendError) Error() string { return e.msg }

// newClient is the HTTP client of every target: redirects are not
// followed (a 3xx is a failure: a receiver moved is a configuration to
// fix, and following could send alerts and signatures to another host),
// response headers are bounded, and each request has its own deadline.
func newClient(timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxResponseHeaderBytes = maxResponseBytes
	tr.ResponseHeaderTimeout = timeout
	tr.MaxIdleConnsPerHost = 2
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// post sends body to rawURL with headers, under timeout (body included),
// and classifies the outcome: nil for a 2xx.
func post(ctx context.Context, client *http.Client, timeout time.Duration, rawURL string, headers http.Header, body []byte) *sendError {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, bytes.NewReader(body))
	if err != nil {
		return &sendError{msg: "build request: " + redact(err), receiver: true}
	}
	req.Header = headers
	req.Header.Set("User-Agent", "fieldhub-notify")
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			return &sendError{msg: fmt.Sprintf("no answer within %s", timeout), receiver: true}
		}
		return &sendError{msg: "post: " + redact(err), receiver: true}
	}
	// At most 64 KiB of the answer is read: a receiver answering a huge
	// body costs us nothing more. Unread bytes close the connection.
	answer, readErr := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	e := &sendError{status: resp.StatusCode}
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		e.msg = fmt.Sprintf("redirect %d not followed", resp.StatusCode)
		e.receiver = true
	default:
		e.msg = fmt.Sprintf("status %d", resp.StatusCode)
		e.receiver = resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout
		if readErr == nil {
			if s := snippet(answer); s != "" {
				e.msg += ": " + s
			}
		}
	}
	return e
}

// redact is err's text without the URL a *url.Error repeats.
func redact(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return redact(ue.Err)
	}
	return err.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// snippet is the start of a receiver's error answer, printable and short,
// for LastError and the log.
func snippet(b []byte) string {
	const maxLen = 200
	if len(b) > maxLen {
		b = b[:maxLen]
	}
	s := strings.ToValidUTF8(string(b), "")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return ' '
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}
