package dynsec

import (
	"os"
	"testing"

	"github.com/go-json-experiment/json"
)

// dynsecAllows evaluates a role's ACL list the way Mosquitto's
// dynamic-security plugin does for our role (only allow entries, literal
// topics, default deny): a publish needs a publishClientSend of that topic;
// a subscription needs a subscribeLiteral of that exact filter and a
// publishClientReceive so the device receives what arrives there.
func dynsecAllows(acls []map[string]any, topic string, publish bool) bool {
	has := func(acltype string) bool {
		for _, a := range acls {
			if a["acltype"] == acltype && a["topic"] == topic && a["allow"] == true {
				return true
			}
		}
		return false
	}
	if publish {
		return has("publishClientSend")
	}
	return has("subscribeLiteral") && has("publishClientReceive")
}

// TestDeviceACLsACLTable checks the Mosquitto role generated for a device
// against the one ACL table (telemetry/testdata/acl.json), row by row.
func TestDeviceACLsACLTable(t *testing.T) {
	b, err := os.ReadFile("../../../telemetry/testdata/acl.json")
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Device, Topic, Access string
		Allowed               bool
	}
	if err := json.Unmarshal(b, &rows, json.MatchCaseInsensitiveNames(true)); err != nil {
		t.Fatal(err)
	}
	if len(rows) < 20 {
		t.Fatalf("acl table has %d rows", len(rows))
	}
	for _, r := range rows {
		if r.Device == "" { // no device, no role
			continue
		}
		acls := deviceACLs(r.Device)
		for _, a := range acls {
			if a["allow"] != true {
				t.Fatalf("role of %s has a deny entry %v: the plugin's default deny covers the rest", r.Device, a)
			}
		}
		if got := dynsecAllows(acls, r.Topic, r.Access == "publish"); got != r.Allowed {
			t.Errorf("dynsec role of %q: %s %q = %v, want %v", r.Device, r.Access, r.Topic, got, r.Allowed)
		}
	}
}
