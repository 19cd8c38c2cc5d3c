package devices

import (
	"slices"
	"testing"
	"time"
)

// TestApplyChanges is the refresh policy as a table: what a batch of
// changes from the store does to the snapshot and which devices get their
// sessions re-checked.
func TestApplyChanges(t *testing.T) {
	h := func(s string) TokenHash { return HashToken(DeviceTokenPrefix + s + "aaaaaaaaaaaaaaaaaaaaaaaa") }
	exp := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	rec := func(id string, labels map[string]string, toks ...StoredToken) Record {
		return Record{ID: id, Labels: labels, Tokens: toks}
	}
	base := func() *snapshot {
		s := &snapshot{devices: map[string]*device{}, byHash: map[TokenHash]string{}, cursor: 5}
		for _, r := range []Record{
			rec("a", map[string]string{"site": "n"}, StoredToken{Hash: h("a")}),
			rec("b", nil, StoredToken{Hash: h("b"), ExpiresAt: exp}, StoredToken{Hash: h("b2")}),
		} {
			s.devices[r.ID] = &device{rec: r, live: newLive(time.Time{})}
			for _, tk := range r.Tokens {
				s.byHash[tk.Hash] = r.ID
			}
		}
		return s
	}
	cases := []struct {
		name        string
		ch          Changes
		wantIDs     []string // devices after
		wantChanged []string
		wantLabel   string // label site of a after
	}{
		{name: "nothing", ch: Changes{Cursor: 5}, wantIDs: []string{"a", "b"}, wantLabel: "n"},
		{name: "create", ch: Changes{Cursor: 6, Devices: []Record{rec("c", nil, StoredToken{Hash: h("c")})}},
			wantIDs: []string{"a", "b", "c"}, wantLabel: "n"},
		{name: "label change keeps sessions", ch: Changes{Cursor: 6, Devices: []Record{rec("a", map[string]string{"site": "s"}, StoredToken{Hash: h("a")})}},
			wantIDs: []string{"a", "b"}, wantLabel: "s"},
		{name: "same expiry in another zone is no change", ch: Changes{Cursor: 6, Devices: []Record{
			rec("b", nil, StoredToken{Hash: h("b"), ExpiresAt: exp.In(time.FixedZone("x", 3600))}, StoredToken{Hash: h("b2")})}},
			wantIDs: []string{"a", "b"}, wantLabel: "n"},
		{name: "rotate", ch: Changes{Cursor: 6, Devices: []Record{rec("a", nil, StoredToken{Hash: h("a2")})}},
			wantIDs: []string{"a", "b"}, wantChanged: []string{"a"}},
		{name: "delete", ch: Changes{Cursor: 6, Deleted: []string{"b", "unknown"}},
			wantIDs: []string{"a"}, wantChanged: []string{"b"}, wantLabel: "n"},
		{name: "full reload drops the unlisted", ch: Changes{Full: true, Cursor: 9, Devices: []Record{rec("a", map[string]string{"site": "n"}, StoredToken{Hash: h("a")})}},
			wantIDs: []string{"a"}, wantChanged: []string{"b"}, wantLabel: "n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cur := base()
			next, changed, _ := applyChanges(cur, tc.ch)
			if err := checkSnapshot(next); err != nil {
				t.Fatal(err)
			}
			if err := checkSnapshot(cur); err != nil || len(cur.devices) != 2 {
				t.Fatalf("the current snapshot was changed: %v", err)
			}
			if next.cursor != tc.ch.Cursor {
				t.Fatalf("cursor %d, want %d", next.cursor, tc.ch.Cursor)
			}
			var ids []string
			for id := range next.devices {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			slices.Sort(changed)
			if !slices.Equal(ids, tc.wantIDs) || !slices.Equal(changed, tc.wantChanged) {
				t.Fatalf("devices %v changed %v, want %v and %v", ids, changed, tc.wantIDs, tc.wantChanged)
			}
			if a := next.devices["a"]; a != nil && a.rec.Labels["site"] != tc.wantLabel {
				t.Fatalf("label site of a = %q, want %q", a.rec.Labels["site"], tc.wantLabel)
			}
			// Live state (presence, last_seen) survives a change of record.
			for id, d := range next.devices {
				if old := cur.devices[id]; old != nil && old.live != d.live {
					t.Fatalf("%s lost its live state", id)
				}
			}
		})
	}
}

// TestRaiseLastSeen: the store's last_seen wins only when newer.
func TestRaiseLastSeen(t *testing.T) {
	t1 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		ours, got time.Time
		want      time.Time
	}{
		{"store newer", t1, t1.Add(time.Second), t1.Add(time.Second)},
		{"ours newer", t1.Add(time.Second), t1, t1.Add(time.Second)},
		{"store has none", t1, time.Time{}, t1},
		{"we have none", time.Time{}, t1, t1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLive(tc.ours)
			raiseLastSeen(l, Record{LastSeen: tc.got})
			if got := l.lastSeen.Load(); got != nanos(tc.want) {
				t.Fatalf("last_seen %v, want %v", time.Unix(0, got).UTC(), tc.want)
			}
		})
	}
}
