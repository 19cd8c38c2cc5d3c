package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReplaceSection(t *testing.T) {
	section := beginMarker + "\nnew table\n" + endMarker + "\n"
	for _, tc := range []struct {
		name, before, want string
		ok                 bool
	}{
		{"replaces the generated section only", "# B\n\nintro\n" + beginMarker + "\nold\n" + endMarker + "\n\n## Next\n",
			"# B\n\nintro\n" + section + "\n## Next\n", true},
		{"appends a section to a file without one", "# B\n\nintro\n", "# B\n\nintro\n\n" + section, true},
		{"refuses a begin marker without an end", "# B\n" + beginMarker + "\nold\n", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "b.md")
			if err := os.WriteFile(path, []byte(tc.before), 0o644); err != nil {
				t.Fatal(err)
			}
			err := replaceSection(path, section)
			if (err == nil) != tc.ok {
				t.Fatalf("replaceSection: %v, want ok %v", err, tc.ok)
			}
			got, _ := os.ReadFile(path)
			if tc.ok && string(got) != tc.want {
				t.Fatalf("got\n%q\nwant\n%q", got, tc.want)
			}
			if !tc.ok && string(got) != tc.before {
				t.Fatalf("a refused rewrite changed the file:\n%s", got)
			}
		})
	}
}

func TestCompare(t *testing.T) {
	var hub, peer result
	hub.Bench.Steps = []step{
		{Target: 1000, Start: 0, End: 10000, Acked: 10000, Landed: 10000, CPU: map[string]float64{"hub": 2, "influxd": 1}},
		{Target: 20000, Start: 10000, End: 20000, Acked: 200000, Landed: 200000, CPU: map[string]float64{"hub": 8, "influxd": 2}, FellBehind: true},
	}
	peer.Bench.Steps = []step{
		{Target: 1000, Start: 0, End: 10000, Acked: 10000, Landed: 10000, CPU: map[string]float64{"telegraf": 1, "mosquitto": 0.5, "influxd": 0.5}},
	}
	rows := compare(hub, peer)
	if len(rows) != 2 || rows[0].rate != 1000 || rows[1].rate != 20000 {
		t.Fatalf("rows %+v", rows)
	}
	if h := rows[0].hub; h.perM != 300 || h.ownPerM != 200 || h.cores != 0.3 {
		t.Errorf("hub at 1,000: %+v, want 300 CPU-s per M (200 hub alone), 0.3 cores", h)
	}
	if r, ok := rows[0].ratio(); !ok || r != 1.5 {
		t.Errorf("ratio at 1,000: %v %v, want 1.5", r, ok)
	}
	if _, ok := rows[1].ratio(); ok || rows[1].peer.ran {
		t.Errorf("the peer never ran at 20,000, yet %+v", rows[1])
	}
	table := renderTable(rows, "")
	for _, want := range []string{"| 1,000 | 10,000 | 0 | 0.20 | 200 | 10,000 | 0 | 0.30 | 300 (200) | 1.50 |", "fell behind", "| 20,000 | – | – | – | – |"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
}
