package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// docBlocks returns the first fenced code block under each "## " heading
// of a Markdown file, by heading.
func docBlocks(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[string]string{}
	heading, in := "", false
	var cur []string
	for _, l := range strings.Split(string(data), "\n") {
		switch {
		case in && l == "```":
			in = false
			if _, seen := blocks[heading]; !seen {
				blocks[heading] = strings.Join(cur, "\n") + "\n"
			}
		case in:
			cur = append(cur, l)
		case strings.HasPrefix(l, "```"):
			in, cur = true, nil
		case strings.HasPrefix(l, "## "):
			heading = strings.TrimPrefix(l, "## ")
		}
	}
	return blocks
}

// protocolTopics are the MQTT topics of docs/protocol.md's topic table.
func protocolTopics(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "protocol.md"))
	if err != nil {
		t.Fatal(err)
	}
	topics := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(devices/\\{id\\}/[a-z/]+)` \\|").FindAllStringSubmatch(string(data), -1) {
		topics[m[1]] = true
	}
	if len(topics) != 4 {
		t.Fatalf("protocol.md topic table: %v", topics)
	}
	return topics
}

// TestClientExamples checks the device examples of docs/clients.md: the
// curl and WebSocket ones run against a real hub (readings stored, a
// command answered); the Python one compiles; the MQTT ones use the
// device id as client id and username, the token as password, and only
// topics of docs/protocol.md.
func TestClientExamples(t *testing.T) {
	blocks := docBlocks(t, filepath.Join(repoRoot(t), "docs", "clients.md"))
	py, cpp, curl, js := blocks["Python (paho-mqtt 2.x)"], blocks["C/Arduino (PubSubClient)"], blocks["curl (HTTP)"], blocks["JavaScript (WebSocket)"]
	if py == "" || cpp == "" || curl == "" || js == "" {
		t.Fatalf("docs/clients.md lacks an example: %v", blocks)
	}

	t.Run("mqtt credentials and topics", func(t *testing.T) {
		topics := protocolTopics(t)
		checks := []struct {
			name, code string
			want       []string
			topicForm  *regexp.Regexp // a topic in the code: what comes before and after the device id
		}{
			{"python", py, []string{"client_id=DEVICE_ID", "username_pw_set(DEVICE_ID, DEVICE_TOKEN)", "mqtt.CallbackAPIVersion.VERSION2",
				`f"devices/{DEVICE_ID}/telemetry", json.dumps(reading), qos=1`, `(f"devices/{DEVICE_ID}/commands", 1)`},
				regexp.MustCompile(`f"([a-z]+)/\{DEVICE_ID\}/([a-z/]+)"`)},
			{"arduino", cpp, []string{"mqtt.connect(DEVICE_ID, DEVICE_ID, DEVICE_TOKEN)", "mqtt.subscribe(topicCommands, 1)", "mqtt.publish(topicTelemetry, body)", "mqtt.publish(topicResult, out)", "setBufferSize"},
				regexp.MustCompile(`"([a-z]+)/%s/([a-z/]+)"`)},
		}
		for _, c := range checks {
			for _, w := range c.want {
				if !strings.Contains(c.code, w) {
					t.Errorf("%s example lacks %q", c.name, w)
				}
			}
			found := c.topicForm.FindAllStringSubmatch(c.code, -1)
			if len(found) < 3 {
				t.Errorf("%s example: topics %v", c.name, found)
			}
			for _, m := range found {
				if topic := m[1] + "/{id}/" + m[2]; !topics[topic] {
					t.Errorf("%s example uses %s, not a topic of docs/protocol.md", c.name, topic)
				}
			}
		}
	})

	t.Run("python compiles", func(t *testing.T) {
		src := writeFile(t, "device.py", py)
		if out, err := exec.Command("python3", "-m", "py_compile", src).CombinedOutput(); err != nil {
			t.Fatalf("py_compile: %v\n%s", err, out)
		}
	})

	influx := startInflux(t)
	h := startHub(t, influx, nil)

	t.Run("curl", func(t *testing.T) {
		token := h.createDevice(t, "curl-1")
		_, queued := h.send(t, h.adminToken, "curl-1", "", map[string]any{"name": "reboot"}, nil)
		ctx, cancel := context.WithTimeout(context.Background(), loadWait)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", "-c", curl)
		cmd.Env = append(os.Environ(), "HUB="+h.url, "DEVICE_TOKEN="+token)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.Count(string(out), `"type":"ack"`) != 2 || !strings.Contains(string(out), "command: ") {
			t.Fatalf("curl example: %v\n%s", err, out)
		}
		if st := h.commandStatus(t, "curl-1", queued["id"].(string)); st != "succeeded" {
			t.Fatalf("command %s after the curl example", st)
		}
		waitUntil(t, "3 curl readings in InfluxDB", loadWait, func() bool { n, _ := influx.Count("curl-1", "temp"); return n == 3 })
	})

	t.Run("websocket", func(t *testing.T) {
		token := h.createDevice(t, "js-1")
		src := writeFile(t, "device.mjs", js)
		args := []string{src}
		if nodeMajor(t) < 22 {
			args = append([]string{"--experimental-websocket"}, args...)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cmd := exec.CommandContext(ctx, "node", args...)
		cmd.Env = append(os.Environ(), "HUB_WS=ws"+strings.TrimPrefix(h.url, "http"), "DEVICE_TOKEN="+token)
		cmd.WaitDelay = 5 * time.Second
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); _ = cmd.Wait() }()
		lines := make(chan string, 64)
		go func() { // ends when node's stdout closes
			defer close(lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		waitLine := func(want string) {
			t.Helper()
			deadline := time.After(loadWait)
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("node ended before printing %q", want)
					}
					if strings.HasPrefix(l, want) {
						return
					}
				case <-deadline:
					t.Fatalf("node did not print %q within %s", want, loadWait)
				}
			}
		}
		waitLine("stored 1")
		st, done := h.send(t, h.adminToken, "js-1", "?wait=60s", map[string]any{"name": "reboot"}, nil)
		if result, _ := done["result"].(map[string]any); st != 200 || done["status"] != "succeeded" || result["done"] != "reboot" {
			t.Fatalf("command to the WebSocket example: %d %v", st, done)
		}
		waitLine("command ")
		waitUntil(t, "the WebSocket reading in InfluxDB", loadWait, func() bool { n, _ := influx.Count("js-1", "temp"); return n >= 1 })
	})
}

func nodeMajor(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("node", "--version").Output()
	if err != nil {
		t.Fatalf("node (Node.js, the machine's; Debian's nodejs package) runs the WebSocket client example: %v", err)
	}
	major, _ := strconv.Atoi(strings.SplitN(strings.TrimPrefix(strings.TrimSpace(string(out)), "v"), ".", 2)[0])
	return major
}
