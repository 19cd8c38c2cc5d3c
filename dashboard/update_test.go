package dashboard

import (
	"fmt"
	"strings"
	"testing"
)

// TestUpdateDevice: PATCH /api/v1/devices/{id} changes the name and the
// labels (either optional, labels replacing the set) for admins only,
// with the rules of create, persists, and leaves one audit line without
// any token.
func TestUpdateDevice(t *testing.T) {
	r := newAPIRig(t, "")
	if st, m := r.call(t, "POST", "/api/v1/devices", r.admin, "", `{"id":"pump-1","name":"Pump","labels":{"site":"north","floor":"2"}}`); st != 201 {
		t.Fatalf("create: %d %v", st, m)
	}
	tests := []struct {
		name       string
		id, token  string
		body       string
		status     int
		wantName   string
		wantLabels string // fmt of the labels after the request
		errHas     string
	}{
		{"name only keeps labels", "pump-1", r.admin, `{"name":"Pump 1"}`, 200, "Pump 1", "map[floor:2 site:north]", ""},
		{"labels replace the set", "pump-1", r.admin, `{"labels":{"site":"east"}}`, 200, "Pump 1", "map[site:east]", ""},
		{"both", "pump-1", r.admin, `{"name":"P","labels":{"a":"1","b":"2"}}`, 200, "P", "map[a:1 b:2]", ""},
		{"empty labels clear them", "pump-1", r.admin, `{"labels":{}}`, 200, "P", "map[]", ""},
		{"empty name is allowed, as on create", "pump-1", r.admin, `{"name":""}`, 200, "", "map[]", ""},
		{"name too long", "pump-1", r.admin, `{"name":"` + strings.Repeat("n", 129) + `"}`, 400, "", "map[]", "name must be at most 128 bytes"},
		{"bad label key", "pump-1", r.admin, `{"labels":{"bad key":"x"}}`, 400, "", "map[]", `label key "bad key"`},
		{"bad label value", "pump-1", r.admin, `{"labels":{"k":""}}`, 400, "", "map[]", `label "k" value`},
		{"too many labels", "pump-1", r.admin, `{"labels":{` + manyLabels(33) + `}}`, 400, "", "map[]", "at most 32 labels"},
		{"labels not an object", "pump-1", r.admin, `{"labels":"site=north"}`, 400, "", "map[]", "labels"},
		{"the id cannot change", "pump-1", r.admin, `{"id":"pump-2"}`, 400, "", "map[]", `unknown field "id"`},
		{"nothing to change", "pump-1", r.admin, `{}`, 400, "", "map[]", "give name, labels or both"},
		{"no body", "pump-1", r.admin, ``, 400, "", "map[]", "invalid JSON body"},
		{"unknown device", "nope", r.admin, `{"name":"x"}`, 404, "", "map[]", "not found"},
		{"operators may not", "pump-1", r.operator, `{"name":"x"}`, 403, "", "map[]", "admin role"},
		{"viewers may not", "pump-1", r.viewer, `{"name":"x"}`, 403, "", "map[]", "admin role"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, m := r.call(t, "PATCH", "/api/v1/devices/"+tc.id, tc.token, "application/json", tc.body)
			if st != tc.status {
				t.Fatalf("status %d, want %d: %v", st, tc.status, m)
			}
			if st == 200 {
				d := m["device"].(map[string]any)
				if d["id"] != "pump-1" || d["name"] != tc.wantName || fmt.Sprint(d["labels"]) != tc.wantLabels {
					t.Fatalf("answer %v, want name %q labels %s", d, tc.wantName, tc.wantLabels)
				}
			} else if msg := fmt.Sprint(m["error"]); !strings.Contains(msg, tc.errHas) {
				t.Fatalf("error %s does not say %q", msg, tc.errHas)
			}
			_, g := r.call(t, "GET", "/api/v1/devices/pump-1", r.viewer, "", "")
			if d := g["device"].(map[string]any); d["name"] != tc.wantName || fmt.Sprint(d["labels"]) != tc.wantLabels {
				t.Fatalf("device now %v, want name %q labels %s", d, tc.wantName, tc.wantLabels)
			}
		})
	}
	if n := strings.Count(r.logs.String(), `msg="device updated" device=pump-1`); n != 5 {
		t.Errorf("%d audit lines, want 5:\n%s", n, r.logs)
	}
	if !strings.Contains(r.logs.String(), `msg="device updated" device=pump-1 name=true labels=true by=bootstrap-admin`) {
		t.Errorf("audit line lacks what changed or by whom:\n%s", r.logs)
	}
	for _, secret := range []string{r.admin, r.operator, r.viewer} {
		if strings.Contains(r.logs.String(), secret) {
			t.Fatal("a token is in the log")
		}
	}
}

func manyLabels(n int) string {
	var kv []string
	for i := range n {
		kv = append(kv, fmt.Sprintf(`"k%d":"v"`, i))
	}
	return strings.Join(kv, ",")
}
