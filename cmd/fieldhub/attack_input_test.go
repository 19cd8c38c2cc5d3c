package main

// The input-bounds attacks (issue 17): a device makes the hub hold more
// than it sent or more than the bounds allow. Each test attacks the
// in-process hub through real sockets, checks what the device gets back
// and that nothing was stored, and logs the hub's heap growth.

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// inputHeapWatch samples this process's HeapInuse (the in-process hub's
// heap, and the test's) until stop, keeping the peak.
type inputHeapWatch struct {
	base uint64
	peak atomic.Uint64
	stop chan struct{}
	done chan struct{}
}

func inputWatchHeap() *inputHeapWatch {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w := &inputHeapWatch{base: ms.HeapInuse, stop: make(chan struct{}), done: make(chan struct{})}
	w.peak.Store(ms.HeapInuse)
	go func() { // owner: the test; stops at growth()
		defer close(w.done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > w.peak.Load() {
					w.peak.Store(ms.HeapInuse)
				}
			}
		}
	}()
	return w
}

// growth stops the watch and returns the peak growth over the base, MiB.
func (w *inputHeapWatch) growth() float64 {
	close(w.stop)
	<-w.done
	return float64(w.peak.Load()-min(w.base, w.peak.Load())) / (1 << 20)
}

// inputPadded is a valid telemetry message followed by n bytes of white
// space (which JSON allows and permessage-deflate or gzip shrink about a
// thousandfold), written to w in pieces so the test never holds it whole.
func inputPadded(w io.Writer, n int) error {
	if _, err := io.WriteString(w, `{"type":"telemetry","id":"bomb","metrics":{"bomb":1}}`); err != nil {
		return err
	}
	chunk := bytes.Repeat([]byte(" "), 1<<20)
	for n > 0 {
		k := min(n, len(chunk))
		if _, err := w.Write(chunk[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// inputBadBatch is a telemetry batch with n invalid metric names, 100 to
// a reading: about 7 bytes of input per broken rule.
func inputBadBatch(n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"type":"telemetry","id":"bad","readings":[`)
	for r := 0; n > 0; r++ {
		if r > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"metrics":{`)
		for i := 0; i < 100 && n > 0; i, n = i+1, n-1 {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"%d":0`, i)
		}
		b.WriteString(`}}`)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

func inputWSURL(h *hub) string { return strings.Replace(h.url, "http", "ws", 1) + "/ws/device" }

// inputNothingStored checks that the device's bomb metric never reached
// InfluxDB: a good reading sent after it on a new connection is waited
// for first (the spool hands readings to InfluxDB in order), then counted.
func inputNothingStored(t *testing.T, h *hub, influx *influxtest.Server, device, token string) {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(inputWSURL(h), http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"telemetry","id":"after","metrics":{"after":1}}`)); err != nil {
		t.Fatal(err)
	}
	var ack map[string]any
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := c.ReadJSON(&ack); err != nil || ack["type"] != "ack" {
		t.Fatalf("reading after the bomb: %v %v", ack, err)
	}
	waitUntil(t, "the reading after the bomb in InfluxDB", 30*time.Second, func() bool {
		n, _ := influx.Count(device, "after")
		return n == 1
	})
	if n, err := influx.Count(device, "bomb"); err != nil || n != 0 {
		t.Fatalf("%d readings of the bomb in InfluxDB (%v)", n, err)
	}
	if m := scrape(t, h); m[`fieldhub_readings_accepted_total{transport="ws"}`] != 1 {
		t.Fatalf("readings accepted over ws = %v, want 1 (the one after)", m[`fieldhub_readings_accepted_total{transport="ws"}`])
	}
}

// TestAttackCompressedWebSocketBomb: 64 MiB of JSON that permessage-
// deflate sends as about 64 KiB, under the 256 KiB limit, was acked and
// stored. Now the hub decompresses no more than the limit and closes 1009.
func TestAttackCompressedWebSocketBomb(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	token := h.createDevice(t, "bomber")

	d := websocket.Dialer{EnableCompression: true}
	c, resp, err := d.Dial(inputWSURL(h), http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.Contains(ext, "permessage-deflate") {
		t.Fatalf("compression not negotiated (%q): the attack needs it", ext)
	}
	// Best compression: 64 MiB of white space is then about 64 KiB on the
	// wire, well under the 256 KiB limit gorilla counts.
	if err := c.SetCompressionLevel(flate.BestCompression); err != nil {
		t.Fatal(err)
	}
	heap := inputWatchHeap()
	start := time.Now()
	// The device reads while it writes, as a device would: the hub may cut
	// it before it has written the whole bomb.
	wrote := make(chan error, 1)
	go func() { // owner: the test; ends when the bomb is written or refused
		wr, err := c.NextWriter(websocket.TextMessage)
		if err == nil {
			err = inputPadded(wr, 64<<20)
		}
		if err == nil {
			err = wr.Close()
		}
		wrote <- err
	}()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var got error
	for got == nil {
		var f map[string]any
		got = c.ReadJSON(&f)
		if got == nil {
			t.Errorf("answer to the bomb: %v", f)
		}
	}
	c.Close()
	if err := <-wrote; err != nil {
		t.Logf("writing the bomb: %v (the hub closed the connection first)", err)
	}
	took := time.Since(start)
	grew := heap.growth()
	t.Logf("64 MiB compressed bomb: %v after %s; hub heap grew %.1f MiB at peak", got, took.Round(time.Millisecond), grew)
	if !websocket.IsCloseError(got, websocket.CloseMessageTooBig) {
		t.Fatalf("connection ended with %v, want close 1009", got)
	}
	if grew > 32 {
		t.Fatalf("hub heap grew %.1f MiB under a 256 KiB limit", grew)
	}
	inputNothingStored(t, h, influx, "bomber", token)
}

// TestAttackGzipHTTPBomb: the HTTP fallback takes Content-Encoding: gzip,
// bounded after decompression (413), and refuses any other encoding (415).
func TestAttackGzipHTTPBomb(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	token := h.createDevice(t, "gz")
	post := func(body []byte, encoding string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest("POST", h.url+"/api/v1/telemetry", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		if encoding != "" {
			req.Header.Set("Content-Encoding", encoding)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	var bomb bytes.Buffer
	zw := gzip.NewWriter(&bomb)
	if err := inputPadded(zw, 64<<20); err != nil {
		t.Fatal(err)
	}
	_ = zw.Close()
	t.Logf("gzip bomb: %d bytes on the wire, 64 MiB decompressed", bomb.Len())

	heap := inputWatchHeap()
	start := time.Now()
	st, m := post(bomb.Bytes(), "gzip")
	took := time.Since(start)
	grew := heap.growth()
	t.Logf("gzip bomb: %d %v after %s; hub heap grew %.1f MiB at peak", st, m, took.Round(time.Millisecond), grew)
	if st != http.StatusRequestEntityTooLarge || m["code"] != "too_large" {
		t.Fatalf("gzip bomb answered %d %v, want 413 too_large", st, m)
	}
	if grew > 32 {
		t.Fatalf("hub heap grew %.1f MiB under a 256 KiB limit", grew)
	}

	var small bytes.Buffer
	zw = gzip.NewWriter(&small)
	_, _ = io.WriteString(zw, `{"id":"gz1","metrics":{"gz":1}}`)
	_ = zw.Close()
	if st, m := post(small.Bytes(), "gzip"); st != 200 || m["type"] != "ack" {
		t.Fatalf("gzip body answered %d %v, want 200 ack", st, m)
	}
	if st, m := post([]byte(`{"metrics":{"br":1}}`), "br"); st != http.StatusUnsupportedMediaType || m["code"] != "unsupported_encoding" || !strings.Contains(fmt.Sprint(m["message"]), "gzip") {
		t.Fatalf("Content-Encoding br answered %d %v, want 415 unsupported_encoding naming gzip", st, m)
	}
	waitUntil(t, "the gzip reading in InfluxDB", 30*time.Second, func() bool {
		n, _ := influx.Count("gz", "gz")
		return n == 1
	})
	for _, f := range []string{"bomb", "br"} {
		if n, err := influx.Count("gz", f); err != nil || n != 0 {
			t.Fatalf("%d readings of %s in InfluxDB (%v)", n, f, err)
		}
	}
}

// TestAttackMQTTOverWebSocketUncompressed: MQTT over WebSocket does not
// negotiate permessage-deflate, so its read limit (the broker's packet
// limit) counts the bytes the hub holds; a message past it is refused.
// (This path was already safe; the test keeps it so.)
func TestAttackMQTTOverWebSocketUncompressed(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	d := websocket.Dialer{EnableCompression: true, Subprotocols: []string{"mqtt"}}
	c, resp, err := d.Dial(strings.Replace(h.url, "http", "ws", 1)+"/mqtt", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Fatalf("MQTT over WebSocket negotiated %q: its limit would count compressed bytes", ext)
	}
	if err := c.WriteMessage(websocket.BinaryMessage, make([]byte, 300<<10)); err != nil {
		return // the hub closed the connection before taking it all
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := c.ReadMessage(); err == nil {
		t.Fatal("a 300 KiB message was answered, want the connection closed")
	}
}

// TestAttackErrorAmplification: 239 KB of bad fields produced a 5.6 MB
// error frame. Now an error answer lists the first 20 broken rules and
// counts the rest, and stays under 4 KiB, over WebSocket, HTTP and MQTT.
func TestAttackErrorAmplification(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	token := h.createDevice(t, "noisy")
	const bad = 34000
	msg := inputBadBatch(bad)
	check := func(how string, frame []byte) {
		t.Helper()
		t.Logf("%s: %d bytes of input with %d broken rules -> %d byte error frame (%.3fx)", how, len(msg), bad, len(frame), float64(len(frame))/float64(len(msg)))
		var f struct {
			Type, Code, Message string
			Errors              []struct{ Field, Reason string }
		}
		if err := json.Unmarshal(frame, &f); err != nil {
			t.Fatalf("%s: %v", how, err)
		}
		if len(frame) >= 4096 {
			t.Fatalf("%s: error frame of %d bytes, want < 4 KiB", how, len(frame))
		}
		if f.Code != "invalid" || len(f.Errors) != 21 {
			t.Fatalf("%s: code %q with %d entries, want invalid with 20 + 1", how, f.Code, len(f.Errors))
		}
		if f.Errors[0].Field != "readings[0].metrics.0" {
			t.Fatalf("%s: first entry %+v", how, f.Errors[0])
		}
		if last := f.Errors[20]; last.Field != "..." || last.Reason != fmt.Sprintf("and %d more", bad-20) {
			t.Fatalf("%s: last entry %+v, want ... and %d more", how, last, bad-20)
		}
		if !strings.HasSuffix(f.Message, fmt.Sprintf("(and %d more)", bad-1)) {
			t.Fatalf("%s: message %q", how, f.Message)
		}
	}

	c, _, err := websocket.DefaultDialer.Dial(inputWSURL(h), http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, frame, err := c.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	check("websocket", frame)

	req, _ := http.NewRequest("POST", h.url+"/api/v1/telemetry", bytes.NewReader(msg))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("http: %d %s", resp.StatusCode, body)
	}
	check("http", body)

	// MQTT 3.1.1: the error frame comes on the device's errors topic. The
	// client id is the device id.
	mq := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + h.env["FIELDHUB_MQTT_ADDR"]).
		SetClientID("noisy").SetUsername("noisy").SetPassword(token).SetAutoReconnect(false))
	if tok := mq.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect: %v", tok.Error())
	}
	defer mq.Disconnect(50)
	mqErrs := make(chan []byte, 4)
	if tok := mq.Subscribe("devices/noisy/errors", 1, func(_ paho.Client, m paho.Message) { mqErrs <- m.Payload() }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt subscribe: %v", tok.Error())
	}
	if tok := mq.Publish("devices/noisy/telemetry", 1, false, msg); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt publish: %v", tok.Error())
	}
	select {
	case frame := <-mqErrs:
		check("mqtt", frame)
	case <-time.After(15 * time.Second):
		t.Fatal("no error frame on devices/noisy/errors")
	}
}

var inputQueuedBytes = regexp.MustCompile(`device not reading its answers.*device=slowpoke.*queued_bytes=(\d+)`)

// TestAttackSlowDeviceQueueBytes: a device that never reads while sending
// bad messages made the hub queue 64 error frames of megabytes each (RSS
// 210 -> 628 MB in 2.3 s). Now what the hub queues toward a device is
// bounded in bytes: past FIELDHUB_WS_SEND_QUEUE_BYTES the device is cut
// (slow_consumer, logged with the queued bytes, counted) and the heap
// stays flat.
func TestAttackSlowDeviceQueueBytes(t *testing.T) {
	const bound = 32 << 10
	influx := startInflux(t)
	h := startHub(t, influx, map[string]string{
		"FIELDHUB_WS_SEND_QUEUE_BYTES": strconv.Itoa(bound),
		"FIELDHUB_RATE_LIMIT":          "100000",
		"FIELDHUB_RATE_BURST":          "100000",
	})
	token := h.createDevice(t, "slowpoke")
	// A small receive buffer: the device's kernel takes little of the
	// hub's answers before the hub's own queue has to hold them.
	d := websocket.Dialer{NetDial: func(network, addr string) (net.Conn, error) {
		c, err := net.Dial(network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4096)
		}
		return c, err
	}}
	c, _, err := d.Dial(inputWSURL(h), http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := inputBadBatch(34000) // one answer of megabytes before the fix
	small := inputBadBatch(25)  // a full-sized answer from a short message
	heap := inputWatchHeap()
	start := time.Now()
	var sent int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // owner: the test; stops when the hub stops reading or cuts the device
		defer wg.Done()
		for i := 0; i < 20000; i++ {
			msg := small
			if i%50 == 0 {
				msg = big
			}
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
				return
			}
			sent = i + 1
		}
	}()
	waitUntil(t, "the hub to cut the device that does not read", 60*time.Second, func() bool {
		return inputQueuedBytes.MatchString(h.stderr.String())
	})
	took := time.Since(start)
	grew := heap.growth()
	c.Close()
	wg.Wait()
	line := inputQueuedBytes.FindStringSubmatch(h.stderr.String())
	queued, _ := strconv.Atoi(line[1])
	t.Logf("device that never reads: cut after %d messages in %s with %d bytes queued (bound %d); hub heap grew %.1f MiB at peak",
		sent, took.Round(time.Millisecond), queued, bound, grew)
	if queued > bound+4096 {
		t.Fatalf("cut with %d bytes queued toward the device, bound %d (+ one answer)", queued, bound)
	}
	if grew > 64 {
		t.Fatalf("hub heap grew %.1f MiB for one device that does not read", grew)
	}
	waitUntil(t, "the slow_consumer disconnect counted", 15*time.Second, func() bool {
		return scrape(t, h)[`fieldhub_device_disconnects_total{reason="slow_consumer",transport="ws"}`] == 1
	})
}
