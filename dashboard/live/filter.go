package live

import (
	"maps"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Filter selects the events a subscriber receives. A subscriber's filter
// is changed only through Hub.Subscribe and Subscriber.Update.
type Filter struct {
	// All follows every device ("*").
	All bool
	// Devices are the devices followed besides All.
	Devices map[string]bool
	// Metrics keeps only these metrics of a reading; nil keeps every one.
	Metrics map[string]bool
}

// Matches reports whether the filter selects ev's device.
func (f *Filter) Matches(ev *telemetry.Event) bool {
	return f.All || f.Devices[ev.Device]
}

// WouldHold returns how many devices f would follow after subscribing to
// devs ("*" is not a device).
func (f *Filter) WouldHold(devs []string) int {
	n := len(f.Devices)
	var added map[string]bool
	for _, d := range devs {
		if d == "*" || f.Devices[d] || added[d] {
			continue
		}
		if added == nil {
			added = map[string]bool{}
		}
		added[d] = true
		n++
	}
	return n
}

// Subscribe adds devs ("*": every device) and replaces the metric filter
// (empty: every metric).
func (f *Filter) Subscribe(devs, metrics []string) {
	for _, d := range devs {
		if d == "*" {
			f.All = true
			continue
		}
		if f.Devices == nil {
			f.Devices = map[string]bool{}
		}
		f.Devices[d] = true
	}
	if len(metrics) > 0 {
		f.Metrics = map[string]bool{}
		for _, m := range metrics {
			f.Metrics[m] = true
		}
	} else {
		f.Metrics = nil
	}
}

// Unsubscribe drops devs; "*" drops every device.
func (f *Filter) Unsubscribe(devs []string) {
	for _, d := range devs {
		if d == "*" {
			f.All = false
			f.Devices = nil
			continue
		}
		delete(f.Devices, d)
	}
}

func (f *Filter) clone() Filter {
	return Filter{All: f.All, Devices: maps.Clone(f.Devices), Metrics: maps.Clone(f.Metrics)}
}
