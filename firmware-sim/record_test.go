package firmwaresim

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/fieldhub/fieldhub/telemetry/influxtest"
)

func TestRecorderCap(t *testing.T) {
	r := recorder{cap: 3}
	rs := []Reading{{Device: "a", TS: 1}, {Device: "a", TS: 2}}
	r.add(true, rs)
	r.add(true, rs)
	r.add(false, rs)
	off := recorder{}
	off.add(true, rs)
	if len(r.rec.Acked) != 3 || r.rec.AckedOver != 1 || len(r.rec.Refused) != 2 || r.rec.RefusedOver != 0 {
		t.Fatalf("capped record: %d acked (%d over), %d refused (%d over)", len(r.rec.Acked), r.rec.AckedOver, len(r.rec.Refused), r.rec.RefusedOver)
	}
	if len(off.rec.Acked) != 0 || off.rec.AckedOver != 0 {
		t.Fatalf("a zero cap records nothing, got %+v", off.rec)
	}
}

// TestVerify checks the reading-by-reading comparison against a real
// influxd: each case writes its points and records its readings on a device
// of its own.
func TestVerify(t *testing.T) {
	influx := influxtest.Start(t)
	m := func(temp, hum float64) map[string]float64 { return map[string]float64{"temp": temp, "humidity": hum} }
	for _, tc := range []struct {
		name    string
		stored  []string // line protocol, device tag and time added
		acked   []Reading
		refused []Reading
		over    int64
		want    Verification // Samples not compared, only their count
		samples int
	}{
		{name: "every acked reading as sent",
			stored: []string{"temp=21.5,humidity=40 1000", "temp=21.25,humidity=40.5 2000"},
			acked:  []Reading{{TS: 1000, Metrics: m(21.5, 40)}, {TS: 2000, Metrics: m(21.25, 40.5)}},
			want:   Verification{Acked: 2, Found: 2}},
		{name: "an acked reading missing",
			stored: []string{"temp=21.5,humidity=40 1000"},
			acked:  []Reading{{TS: 1000, Metrics: m(21.5, 40)}, {TS: 2000, Metrics: m(21.25, 40.5)}},
			want:   Verification{Acked: 2, Found: 1, Missing: 1}, samples: 1},
		{name: "a value changed",
			stored: []string{"temp=21.5,humidity=40.1 1000"},
			acked:  []Reading{{TS: 1000, Metrics: m(21.5, 40)}},
			want:   Verification{Acked: 1, Wrong: 1}, samples: 1},
		{name: "a metric dropped",
			stored: []string{"temp=21.5 1000"},
			acked:  []Reading{{TS: 1000, Metrics: m(21.5, 40)}},
			want:   Verification{Acked: 1, Wrong: 1}, samples: 1},
		{name: "a refused reading stored",
			stored:  []string{"temp=21.5,humidity=40 1000", "temp=30,humidity=50 5000"},
			acked:   []Reading{{TS: 1000, Metrics: m(21.5, 40)}},
			refused: []Reading{{TS: 5000, Metrics: m(30, 50)}},
			want:    Verification{Acked: 1, Found: 1, Refused: 1, RefusedStored: 1}, samples: 1},
		{name: "a refused reading at an acked reading's ts, absent",
			stored:  []string{"temp=21.5,humidity=40 1000"},
			acked:   []Reading{{TS: 1000, Metrics: m(21.5, 40)}},
			refused: []Reading{{TS: 1000, Metrics: m(30, 50)}},
			want:    Verification{Acked: 1, Found: 1, Refused: 1}},
		{name: "a refused reading overwrote an acked one",
			stored:  []string{"temp=30,humidity=50 1000"},
			acked:   []Reading{{TS: 1000, Metrics: m(21.5, 40)}},
			refused: []Reading{{TS: 1000, Metrics: m(30, 50)}},
			want:    Verification{Acked: 1, Wrong: 1, Refused: 1, RefusedStored: 1}, samples: 3},
		{name: "a point nobody acked",
			stored: []string{"temp=21.5,humidity=40 1000", "temp=22,humidity=41 3000", "temp=23,humidity=42 5000"},
			acked:  []Reading{{TS: 1000, Metrics: m(21.5, 40)}, {TS: 5000, Metrics: m(23, 42)}},
			want:   Verification{Acked: 2, Found: 2, Unacked: 1}, samples: 1},
		{name: "points outside what was recorded",
			stored: []string{"temp=20,humidity=40 500", "temp=21.5,humidity=40 1000", "temp=22,humidity=41 3000"},
			acked:  []Reading{{TS: 1000, Metrics: m(21.5, 40)}},
			want:   Verification{Acked: 1, Found: 1}},
		{name: "the record overflowed its cap",
			stored: []string{"temp=21.5,humidity=40 1000", "temp=22,humidity=41 3000", "temp=23,humidity=42 5000"},
			acked:  []Reading{{TS: 1000, Metrics: m(21.5, 40)}, {TS: 5000, Metrics: m(23, 42)}},
			over:   1,
			want:   Verification{Acked: 2, Found: 2, Incomplete: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			device := "v-" + strings.ReplaceAll(tc.name, " ", "-")
			var lp strings.Builder
			for _, l := range tc.stored {
				fields, ts, _ := strings.Cut(l, " ")
				fmt.Fprintf(&lp, "telemetry,device=%s %s %s\n", strings.ReplaceAll(device, ",", `\,`), fields, ts)
			}
			resp, err := http.Post(influx.URL+"/write?db="+influxtest.Database+"&precision=ms", "text/plain", strings.NewReader(lp.String()))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				t.Fatalf("write: HTTP %d", resp.StatusCode)
			}
			f := &Fleet{rec: recorder{cap: 100}}
			for _, r := range tc.acked {
				r.Device = device
				f.rec.add(true, []Reading{r})
			}
			for _, r := range tc.refused {
				r.Device = device
				f.rec.add(false, []Reading{r})
			}
			f.rec.rec.AckedOver = tc.over
			v, err := f.Verify(context.Background(), influx.URL, influxtest.Database)
			if err != nil {
				t.Fatal(err)
			}
			samples := len(v.Samples)
			v.Samples = nil
			if !reflect.DeepEqual(v, tc.want) || samples != tc.samples {
				t.Fatalf("got %s with %d samples\nwant %s with %d samples", v, samples, tc.want, tc.samples)
			}
			if v.OK() != (tc.samples == 0 && !tc.want.Incomplete) {
				t.Fatalf("OK() = %v for %s", v.OK(), v)
			}
		})
	}
}
