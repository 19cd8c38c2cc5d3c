package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
)

// authRequest makes one request with a bearer token and extra headers and
// returns the status and the error code of the answer, if any; status 0
// when the request failed (reported with t.Error, so it may be called from
// any goroutine).
func authRequest(t *testing.T, method, url, token string, hdr http.Header) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
		return 0, ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var e struct {
		Code  string `json:"code"`
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	if e.Code == "" {
		e.Code = e.Error.Code
	}
	return resp.StatusCode, e.Code
}

// authDialWS opens the device socket with a token and extra headers and
// returns the handshake's status (101 when connected, 0 when the dial
// failed, reported with t.Error).
func authDialWS(t *testing.T, h *hub, token string, hdr http.Header) int {
	t.Helper()
	if hdr == nil {
		hdr = http.Header{}
	}
	hdr.Set("Authorization", "Bearer "+token)
	c, resp, err := websocket.DefaultDialer.Dial(strings.Replace(h.url, "http", "ws", 1)+"/ws/device", hdr)
	if err == nil {
		c.Close()
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Errorf("dial /ws/device: %v", err)
		return 0
	}
	return resp.StatusCode
}

// authMQTTConnect connects and disconnects an MQTT device over TCP.
func authMQTTConnect(h *hub, id, token string) error {
	mq := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + h.env["FIELDHUB_MQTT_ADDR"]).
		SetClientID(id).SetUsername(id).SetPassword(token).SetAutoReconnect(false).SetConnectRetry(false))
	tok := mq.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("no CONNACK within 10s")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	mq.Disconnect(0)
	return nil
}

// TestAttackAuthBadTokensSpareValidClients: an attacker sends 20 bad tokens
// a second from the address a valid device and a valid admin share (as
// every client does behind one NAT). Every valid connect and call succeeds.
// Before, the failure limiter counted per address only and refused valid
// clients whenever the attacker had spent the address's budget.
func TestAttackAuthBadTokensSpareValidClients(t *testing.T) {
	influx := startInflux(t)
	// The connect limit is not what is under test: raise it so only the
	// failure limiter could refuse anyone.
	h := startHub(t, influx, map[string]string{"FIELDHUB_MQTT_CONNECT_RATE": "1000"})
	devToken := h.createDevice(t, "nat-dev")
	mqttToken := h.createDevice(t, "nat-mqtt")

	stop := make(chan struct{})
	var attacker sync.WaitGroup
	var badSent, badRefused int
	attacker.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond) // 20/s
		defer tick.Stop()
		for i := 0; ; i++ {
			// A repeated bad token and fresh guesses, on the device and the
			// operator ways in and on MQTT.
			tok := "fhd_guess-repeated"
			if i%2 == 1 {
				tok = fmt.Sprintf("fhd_guess-%d", i)
			}
			var st int
			switch i % 3 {
			case 0:
				st = authDialWS(t, h, tok, nil)
			case 1:
				st, _ = authRequest(t, "GET", h.url+"/api/v1/devices", strings.Replace(tok, "fhd_", "fho_", 1), nil)
			case 2:
				if authMQTTConnect(h, "nat-dev", tok) == nil {
					st = 200
				} else {
					st = 401
				}
			}
			badSent++
			if st == 401 || st == 429 {
				badRefused++
			}
			if i < 30 {
				continue // first a burst that spends any per-address budget
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})

	deadline := time.Now().Add(4 * time.Second)
	var valid, refused int
	var failures []string
	for time.Now().Before(deadline) {
		if st := authDialWS(t, h, devToken, nil); st != http.StatusSwitchingProtocols {
			refused++
			failures = append(failures, fmt.Sprintf("device ws %d", st))
		}
		if st, code := authRequest(t, "GET", h.url+"/api/v1/commands/next?wait=0s", devToken, nil); st != http.StatusNoContent {
			refused++
			failures = append(failures, fmt.Sprintf("device http %d %s", st, code))
		}
		if st, code := authRequest(t, "GET", h.url+"/api/v1/devices", h.adminToken, nil); st != http.StatusOK {
			refused++
			failures = append(failures, fmt.Sprintf("admin %d %s", st, code))
		}
		if err := authMQTTConnect(h, "nat-mqtt", mqttToken); err != nil {
			refused++
			failures = append(failures, fmt.Sprintf("mqtt %v", err))
		}
		valid += 4
	}
	close(stop)
	attacker.Wait()
	t.Logf("attacker: %d bad attempts, %d refused; valid clients: %d requests, %d refused", badSent, badRefused, valid, refused)
	if badSent < 60 || badRefused != badSent {
		t.Fatalf("attacker sent %d, %d refused: want at least 60, all refused", badSent, badRefused)
	}
	if refused > 0 {
		t.Fatalf("%d of %d valid requests refused, e.g. %v", refused, valid, failures[:min(5, len(failures))])
	}
}

// TestAttackAuthGuesserLimited: a client that keeps failing with the same
// claimed identity is still limited: past its budget (burst 20, then 10 a
// second) it is answered 429 rate_limited with Retry-After, on the device
// and the operator ways in, while a valid token from the same address
// still passes and another bad token from it still hears 401.
func TestAttackAuthGuesserLimited(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{"FIELDHUB_MQTT_CONNECT_RATE": "1000"})
	devToken := h.createDevice(t, "guessed")
	for _, tc := range []struct {
		name, method, path, token, valid string
		ok                               int
	}{
		{"device http", "POST", "/api/v1/telemetry", "fhd_same-guess", devToken, 400},
		{"operator api", "GET", "/api/v1/devices", "fho_same-guess", h.adminToken, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var codes []string
			for range 60 {
				st, code := authRequest(t, tc.method, h.url+tc.path, tc.token, nil)
				codes = append(codes, fmt.Sprintf("%d %s", st, code))
			}
			if codes[0] != "401 unauthorized" {
				t.Fatalf("first failure answered %s, want 401 unauthorized", codes[0])
			}
			limited := 0
			for _, c := range codes[20:] {
				if c == "429 rate_limited" {
					limited++
				}
			}
			// 40 attempts past the burst; the bucket refills 10 a second.
			if limited < 30 || codes[len(codes)-1] != "429 rate_limited" {
				t.Fatalf("past the burst only %d of 40 answered 429 rate_limited: %v", limited, codes)
			}
			req, _ := http.NewRequest(tc.method, h.url+tc.path, nil)
			req.Header.Set("Authorization", "Bearer "+tc.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("limited answer %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
			}
			if st, _ := authRequest(t, tc.method, h.url+tc.path, tc.valid, nil); st != tc.ok {
				t.Fatalf("valid token from the guesser's address: %d, want %d", st, tc.ok)
			}
			// Another client's stale token from the same address is told
			// the truth (401), not the guesser's 429.
			if st, code := authRequest(t, tc.method, h.url+tc.path, tc.token+"-other", nil); st != 401 {
				t.Fatalf("another bad token from the guesser's address: %d %s, want 401", st, code)
			}
		})
	}
}

// TestAttackAuthMQTTWebSocketConnectStorm: 300 connection attempts over
// /mqtt (MQTT over WebSocket) from one address in a burst are limited like
// MQTT over TCP (20/s, burst 50, one budget per address for every way in).
// Before, /mqtt had no connect limit: 300 of 300 were accepted.
func TestAttackAuthMQTTWebSocketConnectStorm(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	url := strings.Replace(h.url, "http", "ws", 1) + "/mqtt"
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second}
	var open []*websocket.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	started := time.Now()
	accepted, limited := 0, 0
	for range 300 {
		c, resp, err := d.Dial(url, nil)
		switch {
		case err == nil:
			accepted++
			open = append(open, c)
		case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
			limited++
		default:
			t.Fatalf("dial /mqtt: %v", err)
		}
	}
	elapsed := time.Since(started)
	// The device WebSocket shares the budget: right after the storm it is
	// refused too.
	wsStatus := authDialWS(t, h, "fhd_any", nil)
	t.Logf("/mqtt: %d of 300 accepted, %d refused with 429 in %s; /ws/device right after: %d", accepted, limited, elapsed.Round(time.Millisecond), wsStatus)
	if allowed := 50 + int(20*elapsed.Seconds()) + 5; accepted > allowed {
		t.Fatalf("%d of 300 /mqtt connections accepted in %s, want at most %d", accepted, elapsed, allowed)
	}
	if accepted+limited != 300 {
		t.Fatalf("accepted %d + limited %d != 300", accepted, limited)
	}
	if accepted < 50 {
		t.Fatalf("only %d accepted: the burst is 50", accepted)
	}
}

// TestAttackAuthTrustedProxies: behind a trusted proxy, two clients with
// different X-Forwarded-For have their own connect and failure budgets;
// without FIELDHUB_TRUSTED_PROXIES, X-Forwarded-For is ignored and
// spoofing it does not escape the limiter.
func TestAttackAuthTrustedProxies(t *testing.T) {
	influx := startInflux(t)
	next := func(xff string) http.Header { return http.Header{"X-Forwarded-For": {xff}} }

	t.Run("trusted proxy", func(t *testing.T) {
		h := startHub(t, influx, map[string]string{"FIELDHUB_TRUSTED_PROXIES": "127.0.0.1/32"})
		tok := h.createDevice(t, "behind-proxy")
		// Client A storms; a spoofed left-hand entry does not change who
		// it is (the right-most untrusted address is).
		limitedA := 0
		for i := range 120 {
			if st := authDialWS(t, h, tok, next(fmt.Sprintf("10.%d.0.1, 198.51.100.1", i))); st == http.StatusTooManyRequests {
				limitedA++
			}
		}
		if limitedA == 0 {
			t.Fatal("client A was never limited")
		}
		// Client B, behind the same proxy, has its whole budget.
		for i := range 40 {
			if st := authDialWS(t, h, tok, next("198.51.100.2")); st != http.StatusSwitchingProtocols {
				t.Fatalf("client B connection %d: %d", i, st)
			}
		}
		// Failures too are per client: A's repeated bad token does not
		// turn B's into 429.
		// (Failing until the budget runs out, however slow the machine:
		// the bucket refills at 10/s, so a count alone could be outpaced.)
		limitedC := false
		for range 500 {
			if st, _ := authRequest(t, "GET", h.url+"/api/v1/devices", "fho_bad", next("198.51.100.3")); st == 429 {
				limitedC = true
				break
			}
		}
		if !limitedC {
			t.Fatal("client C never ran out of its failure budget in 500 bad attempts")
		}
		if st, _ := authRequest(t, "GET", h.url+"/api/v1/devices", "fho_bad", next("198.51.100.4")); st != 401 {
			t.Fatalf("client D with the same bad token: %d, want 401", st)
		}
		// Logs and presence name the client, not the proxy.
		if st := authDialWS(t, h, tok, next("198.51.100.5")); st != http.StatusSwitchingProtocols {
			t.Fatalf("device through the proxy: %d", st)
		}
		waitUntil(t, "client address in the log", 10*time.Second, func() bool {
			logs := h.stderr.String()
			return strings.Contains(logs, "remote=198.51.100.3") && strings.Contains(logs, "remote=198.51.100.5")
		})
	})

	t.Run("no trusted proxy", func(t *testing.T) {
		h := startHub(t, influx, nil)
		tok := h.createDevice(t, "spoofer")
		limited := 0
		started := time.Now()
		for i := range 120 {
			if st := authDialWS(t, h, tok, next(fmt.Sprintf("198.51.%d.%d", i/200, i%200))); st == http.StatusTooManyRequests {
				limited++
			}
		}
		if allowed := 50 + int(20*time.Since(started).Seconds()) + 5; 120-limited > allowed {
			t.Fatalf("with a fresh X-Forwarded-For each time %d of 120 passed, want at most %d: the header was believed", 120-limited, allowed)
		}
		if strings.Contains(h.stderr.String(), "198.51.") {
			t.Fatal("an untrusted X-Forwarded-For reached the log")
		}
	})
}

// TestAttackAuthUniqueTokenLogFlood: a client presenting a new bad token
// every time never runs out of any (address, token) budget, so each
// failure is answered 401; the log lines of failures are bounded hub-wide
// all the same (10/s, burst 20), with the count of those not logged.
// Before: 2,000 bad tokens in ~1 s wrote 2,000 log lines.
func TestAttackAuthUniqueTokenLogFlood(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	started := time.Now()
	const attempts = 600
	for i := range attempts {
		if st, _ := authRequest(t, "GET", h.url+"/api/v1/devices", fmt.Sprintf("fho_guess-%d", i), nil); st != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d, want 401", i, st)
		}
		if st, _ := authRequest(t, "POST", h.url+"/api/v1/telemetry", fmt.Sprintf("fhd_guess-%d", i), nil); st != http.StatusUnauthorized {
			t.Fatalf("device attempt %d: %d, want 401", i, st)
		}
	}
	elapsed := time.Since(started)
	lines := strings.Count(h.stderr.String(), "authentication failed")
	allowed := 20 + int(10*elapsed.Seconds()) + 2
	t.Logf("%d bad tokens in %s: %d log lines (at most %d allowed)", 2*attempts, elapsed.Round(time.Millisecond), lines, allowed)
	if lines > allowed {
		t.Fatalf("%d failure log lines for %d failures in %s, want at most %d", lines, 2*attempts, elapsed, allowed)
	}
	if lines == 0 {
		t.Fatal("no failure was logged at all")
	}
	if !strings.Contains(h.stderr.String(), "suppressed=") {
		t.Error("the log lines do not say how many failures were not logged")
	}
}
