package cluster

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devices"
)

// registryStub stands in for the registry (our own small interface).
type registryStub struct{}

func (registryStub) Refresh(context.Context) error        { return nil }
func (registryStub) Exists(string) bool                   { return true }
func (registryStub) SetPresence(string, devices.Presence) {}
func (registryStub) Touch(string, time.Time)              {}
func (registryStub) Get(id string) (devices.Device, error) {
	return devices.Device{ID: id}, nil
}

// FuzzOnLive feeds arbitrary broker payloads to the live-event decoder:
// whatever another client manages to publish on fieldhub/live/+, the hub
// must not panic, and only well-formed events of valid devices reach the
// dashboards.
func FuzzOnLive(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.json")
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"o":"x","e":[{"type":"reading","device":"../../etc","metrics":{"a":1}}]}`))
	f.Add([]byte(`{"o":"me","e":[]}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		rec := &recorder{}
		c := &Cluster{opts: Options{ClientID: "me", Registry: registryStub{}, Local: rec}, brokerHeard: map[string]time.Time{}, owner: map[string]string{}}
		c.peers = stubPeers(t, rec)
		c.peers = stubPeers(t, rec)
		c.onLive(payload)
		for _, ev := range rec.events {
			if !devices.ValidID(ev.Device) {
				t.Fatalf("event for invalid device id %q reached the dashboards", ev.Device)
			}
		}
	})
}

func TestOnLiveSeed(t *testing.T) {
	b, err := os.ReadFile("testdata/live-batch.json")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	c := &Cluster{opts: Options{ClientID: "me", Registry: registryStub{}, Local: rec}, brokerHeard: map[string]time.Time{}, owner: map[string]string{}}
	c.peers = stubPeers(t, rec)
	c.onLive(b)
	if len(rec.events) != 3 || rec.events[0].Metrics["temp"].Num != 21.5 || rec.events[2].Status != "succeeded" {
		t.Fatalf("decoded %+v", rec.events)
	}
	rec.events = nil
	c.opts.ClientID = "hub-a" // our own events come back from the broker: skipped
	c.onLive(b)
	if len(rec.events) != 0 {
		t.Fatalf("own events taken again: %+v", rec.events)
	}
	c.ownLive = originPrefix("hub-a") // ... without decoding them
	if string(c.ownLive) != `{"o":"hub-a"` {
		t.Fatalf("origin prefix %s", c.ownLive)
	}
	c.onLive(b)
	if len(rec.events) != 0 {
		t.Fatalf("own events taken again: %+v", rec.events)
	}
}
