package alerts

import (
	"slices"
	"strings"

	"github.com/fieldhub/fieldhub/telemetry"
)

// compiled is a rule ready for evaluation: its device list as a set.
type compiled struct {
	*Rule
	devs map[string]struct{} // nil: any device
}

// selects reports whether the rule applies to device id with labels.
func (c *compiled) selects(id string, labels map[string]string) bool {
	if c.devs != nil {
		if _, ok := c.devs[id]; !ok {
			return false
		}
	}
	for k, v := range c.Selector.Labels {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// ruleSet is an immutable snapshot of the rules, indexed for the hot
// path: the bridge's goroutines read it through an atomic pointer
// (Engine.rules) to drop, at the cost of a map lookup, readings no rule
// looks at; the engine's goroutine evaluates with it. It is replaced
// whole, never changed.
type ruleSet struct {
	list      []*compiled // by name
	byID      map[string]*compiled
	threshold map[string][]*compiled // by metric: every threshold rule
	// thrAny and thrDev split threshold by selector, so a reading
	// evaluates only the rules that can select its device: those
	// without a device list, and those listing it.
	thrAny     map[string][]*compiled            // by metric
	thrDev     map[string]map[string][]*compiled // by metric, then device
	noData     map[string][]*compiled            // by metric
	offline    []*compiled
	rejections []*compiled
	gaps       []*compiled
}

func newRuleSet(rules []Rule) *ruleSet {
	rs := &ruleSet{byID: make(map[string]*compiled, len(rules)), threshold: map[string][]*compiled{},
		thrAny: map[string][]*compiled{}, thrDev: map[string]map[string][]*compiled{}, noData: map[string][]*compiled{}}
	for i := range rules {
		r := rules[i]
		c := &compiled{Rule: &r}
		if len(r.Selector.Devices) > 0 {
			c.devs = make(map[string]struct{}, len(r.Selector.Devices))
			for _, d := range r.Selector.Devices {
				c.devs[d] = struct{}{}
			}
		}
		rs.list = append(rs.list, c)
		rs.byID[r.ID] = c
		switch r.Condition.Type {
		case CondThreshold:
			m := r.Condition.Metric
			rs.threshold[m] = append(rs.threshold[m], c)
			if c.devs == nil {
				rs.thrAny[m] = append(rs.thrAny[m], c)
			} else {
				if rs.thrDev[m] == nil {
					rs.thrDev[m] = map[string][]*compiled{}
				}
				for d := range c.devs {
					rs.thrDev[m][d] = append(rs.thrDev[m][d], c)
				}
			}
		case CondNoData:
			rs.noData[r.Condition.Metric] = append(rs.noData[r.Condition.Metric], c)
		case CondOffline:
			rs.offline = append(rs.offline, c)
		case CondRejections:
			rs.rejections = append(rs.rejections, c)
		case CondGaps:
			rs.gaps = append(rs.gaps, c)
		}
	}
	slices.SortFunc(rs.list, func(a, b *compiled) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return rs
}

// wantsReading reports whether any rule looks at one of the metrics.
func (rs *ruleSet) wantsReading(m telemetry.Metrics) bool {
	if len(rs.threshold) == 0 && len(rs.noData) == 0 {
		return false
	}
	for name := range m {
		if _, ok := rs.threshold[name]; ok {
			return true
		}
		if _, ok := rs.noData[name]; ok {
			return true
		}
	}
	return false
}

// wantsPresence reports whether any rule depends on presence.
func (rs *ruleSet) wantsPresence() bool { return len(rs.offline) > 0 || len(rs.noData) > 0 }
