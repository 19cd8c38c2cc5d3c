package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

// repoRoot is the module root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// buildBinaries builds fieldhub and firmware-sim into a directory of
// their own, beside a link to the pinned influxd, for the demo script.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	root := repoRoot(t)
	for _, pkg := range []string{"fieldhub", "firmware-sim"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, pkg), "./cmd/"+pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	if err := os.Symlink(influxtest.Binary(t), filepath.Join(dir, "influxd")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// needMosquittoClients installs Debian's mosquitto clients the way
// `make unit` does, if they are missing.
func needMosquittoClients(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("mosquitto_pub"); err == nil {
		return
	}
	if out, err := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "install-mosquitto")).CombinedOutput(); err != nil {
		t.Fatalf("install mosquitto clients: %v\n%s", err, out)
	}
}

func freePortNumber(t *testing.T) string {
	_, port, _ := net.SplitHostPort(freePort(t))
	return port
}

// startDemo runs scripts/run-demo (what `make run` runs) and returns what
// it printed up to "Press Ctrl-C" and a function that stops it as Ctrl-C
// would.
func startDemo(t *testing.T, bin, varDir string, ports map[string]string) ([]string, func()) {
	t.Helper()
	cmd := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "run-demo"))
	cmd.Env = append(os.Environ(), "FIELDHUB_DEMO_VAR="+varDir, "FIELDHUB_DEMO_BIN="+bin,
		"FIELDHUB_DEMO_HTTP_PORT="+ports["http"], "FIELDHUB_DEMO_MQTT_PORT="+ports["mqtt"], "FIELDHUB_DEMO_INFLUX_PORT="+ports["influx"])
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The reader ends when the script's stdout closes.
	lines := make(chan string, 256)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM) // the script stops its children, newest first
		done := make(chan error, 1)
		go func() {
			for range lines { // drain, so the script never blocks on a full pipe
			}
			done <- cmd.Wait()
		}()
		select {
		case <-done:
		case <-time.After(loadWait):
			_ = cmd.Process.Kill()
			t.Errorf("run-demo did not stop within %s of SIGTERM", loadWait)
		}
	}
	t.Cleanup(stop)
	var printed []string
	deadline := time.After(3 * loadWait)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("run-demo ended before it was ready:\n%s", strings.Join(printed, "\n"))
			}
			printed = append(printed, l)
			if strings.Contains(l, "Press Ctrl-C") {
				return printed, stop
			}
		case <-deadline:
			t.Fatalf("run-demo not ready after %s:\n%s", 3*loadWait, strings.Join(printed, "\n"))
		}
	}
}

// demoLines picks the mosquitto_pub and curl lines out of what run-demo printed.
func demoLines(t *testing.T, printed []string) (mqttLine, curlLine string) {
	t.Helper()
	for _, l := range printed {
		switch l = strings.TrimSpace(l); {
		case strings.HasPrefix(l, "mosquitto_pub "):
			mqttLine = l
		case strings.HasPrefix(l, "curl "):
			curlLine = l
		}
	}
	if mqttLine == "" || curlLine == "" {
		t.Fatalf("no mosquitto_pub or curl line:\n%s", strings.Join(printed, "\n"))
	}
	return mqttLine, curlLine
}

// paste runs a printed line in a shell as an operator pasting it would.
func paste(t *testing.T, line string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), loadWait)
	defer cancel()
	if got, err := exec.CommandContext(ctx, "bash", "-c", line).CombinedOutput(); err != nil {
		t.Fatalf("%s\n%v\n%s", line, err, got)
	}
}

// TestRunDemoPrintsWorkingLines runs `make run`'s script as an operator
// would, pastes the mosquitto_pub and curl lines it prints into a shell,
// and checks the demo device's readings landed in InfluxDB; that the
// README shows the same lines; and that a second run keeps the device and
// its token.
func TestRunDemoPrintsWorkingLines(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and runs the whole demo")
	}
	needMosquittoClients(t)
	bin := buildBinaries(t)
	varDir := t.TempDir()
	ports := map[string]string{"http": freePortNumber(t), "mqtt": freePortNumber(t), "influx": freePortNumber(t)}
	printed, stop := startDemo(t, bin, varDir, ports)
	mqttLine, curlLine := demoLines(t, printed)
	token, err := os.ReadFile(filepath.Join(varDir, "demo-device-token"))
	if err != nil || !strings.HasPrefix(string(token), "fhd_") {
		t.Fatalf("demo device token file: %v %q", err, token)
	}
	tok := strings.TrimSpace(string(token))
	for _, want := range []string{"-p " + ports["mqtt"], "-i demo-1", "-u demo-1", tok, "devices/demo-1/telemetry"} {
		if !strings.Contains(mqttLine, want) {
			t.Errorf("mosquitto_pub line lacks %q: %s", want, mqttLine)
		}
	}
	for _, want := range []string{"Bearer " + tok, "http://127.0.0.1:" + ports["http"] + "/api/v1/telemetry"} {
		if !strings.Contains(curlLine, want) {
			t.Errorf("curl line lacks %q: %s", want, curlLine)
		}
	}
	admin, err := os.ReadFile(filepath.Join(varDir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	h := &hub{url: "http://127.0.0.1:" + ports["http"]}
	waitPoints := func(n int) {
		waitUntil(t, fmt.Sprintf("%d demo readings in InfluxDB", n), loadWait, func() bool {
			st, m := h.api(t, "GET", "/api/v1/devices/demo-1/readings?metric=temp&start=-1h", strings.TrimSpace(string(admin)), nil)
			pts, _ := m["points"].([]any)
			return st == http.StatusOK && len(pts) == n
		})
	}
	paste(t, mqttLine)
	paste(t, curlLine)
	waitPoints(2)

	// The README shows what make run prints, with the default ports and
	// the token left for the reader to take from their own run.
	block := demoBlock(printed)
	block = strings.ReplaceAll(block, tok, "fhd_...")
	block = strings.ReplaceAll(block, "127.0.0.1:"+ports["http"], "127.0.0.1:8080")
	block = strings.ReplaceAll(block, "-p "+ports["mqtt"], "-p 1884")
	readme, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), block) {
		t.Errorf("README.md does not show what make run prints; want it to contain:\n%s", block)
	}

	// A second run on the same data prints the same device and token,
	// and the line still works.
	stop()
	printed, _ = startDemo(t, bin, varDir, ports)
	if again, _ := demoLines(t, printed); again != mqttLine {
		t.Fatalf("second run printed\n%s\nwant\n%s", again, mqttLine)
	}
	paste(t, mqttLine)
	waitPoints(3)
}

// demoBlock is the part of run-demo's message about the demo device.
func demoBlock(printed []string) string {
	var b []string
	in := false
	for _, l := range printed {
		if strings.Contains(l, "Send a reading as the demo device") {
			in = true
		}
		if in {
			b = append(b, l)
			if strings.Contains(l, "and see it at") {
				break
			}
		}
	}
	return strings.Join(b, "\n")
}
