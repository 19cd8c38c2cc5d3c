package mqtt

import (
	"os"
	"testing"

	"github.com/go-json-experiment/json"
)

// TestTopicAllowedACLTable checks the embedded broker's ACL form against
// the one ACL table (telemetry/testdata/acl.json), row by row.
func TestTopicAllowedACLTable(t *testing.T) {
	b, err := os.ReadFile("../../telemetry/testdata/acl.json")
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
		if got := topicAllowed(r.Device, r.Topic, r.Access == "publish"); got != r.Allowed {
			t.Errorf("topicAllowed(%q, %q, %s) = %v, want %v", r.Device, r.Topic, r.Access, got, r.Allowed)
		}
	}
}
