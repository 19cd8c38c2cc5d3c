package telemetry_test

import (
	"os"
	"testing"

	"github.com/go-json-experiment/json"

	"github.com/fieldhub/fieldhub/telemetry"
)

// aclRow is one row of testdata/acl.json, the one table every generated
// ACL form (this package's Allowed, the embedded broker's check, the
// Mosquitto dynamic-security role) is checked against.
type aclRow struct {
	Device  string `json:"device"`
	Topic   string `json:"topic"`
	Access  string `json:"access"` // "publish" or "subscribe"
	Allowed bool   `json:"allowed"`
}

func loadACL(t *testing.T) []aclRow {
	t.Helper()
	b, err := os.ReadFile("testdata/acl.json")
	if err != nil {
		t.Fatal(err)
	}
	var rows []aclRow
	if err := json.Unmarshal(b, &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) < 20 {
		t.Fatalf("acl table has %d rows", len(rows))
	}
	return rows
}

func TestAllowedACLTable(t *testing.T) {
	for _, r := range loadACL(t) {
		a := telemetry.Subscribe
		if r.Access == "publish" {
			a = telemetry.Publish
		}
		if got := telemetry.Allowed(r.Device, r.Topic, a); got != r.Allowed {
			t.Errorf("Allowed(%q, %q, %s) = %v, want %v", r.Device, r.Topic, r.Access, got, r.Allowed)
		}
	}
}

// TestDeviceACLMatchesTable: every rule DeviceACL lists is an allowed row
// of the table and every allowed row of device d1 is a rule.
func TestDeviceACLMatchesTable(t *testing.T) {
	allowed := map[string]bool{}
	for _, r := range loadACL(t) {
		if r.Allowed && r.Device == "d1" {
			allowed[r.Topic+" "+r.Access] = true
		}
	}
	got := map[string]bool{}
	for _, rule := range telemetry.DeviceACL("d1") {
		for _, a := range []struct {
			bit  telemetry.Access
			name string
		}{{telemetry.Publish, "publish"}, {telemetry.Subscribe, "subscribe"}} {
			if rule.Access&a.bit != 0 {
				got[rule.Topic+" "+a.name] = true
			}
		}
		if rule.Topic != telemetry.Topic("d1", rule.Kind) {
			t.Errorf("rule %+v: topic is not Topic(d1, kind)", rule)
		}
	}
	if len(got) != len(allowed) {
		t.Errorf("DeviceACL = %v, table allows %v", got, allowed)
	}
	for k := range allowed {
		if !got[k] {
			t.Errorf("table allows %s; DeviceACL does not", k)
		}
	}
}

func TestTopicRoundTrip(t *testing.T) {
	tests := []struct {
		kind  telemetry.Kind
		topic string
	}{
		{telemetry.KindTelemetry, "devices/d-1/telemetry"},
		{telemetry.KindCommandResult, "devices/d-1/commands/result"},
		{telemetry.KindCommands, "devices/d-1/commands"},
		{telemetry.KindErrors, "devices/d-1/errors"},
	}
	for _, tt := range tests {
		if got := telemetry.Topic("d-1", tt.kind); got != tt.topic {
			t.Errorf("Topic(d-1, %d) = %q, want %q", tt.kind, got, tt.topic)
		}
		id, k, ok := telemetry.ParseTopic(tt.topic)
		if !ok || id != "d-1" || k != tt.kind {
			t.Errorf("ParseTopic(%q) = %q, %d, %v", tt.topic, id, k, ok)
		}
	}
	if got := telemetry.Topic("d", telemetry.KindFrame); got != "" {
		t.Errorf("Topic(KindFrame) = %q, want empty", got)
	}
	if got := telemetry.Topic("d", telemetry.Kind(200)); got != "" {
		t.Errorf("Topic(200) = %q, want empty", got)
	}
	for _, bad := range []string{"", "devices/", "devices/d", "devices//telemetry", "devices/+/telemetry", "devices/#/errors",
		"devices/d/", "devices/d/telemetry/", "devices/d/commands/results", "x/devices/d/telemetry", "devices/d/#"} {
		if id, k, ok := telemetry.ParseTopic(bad); ok {
			t.Errorf("ParseTopic(%q) = %q, %d, true; want not ok", bad, id, k)
		}
	}
}
