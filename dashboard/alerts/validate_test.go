package alerts_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/fieldhub/fieldhub/dashboard/alerts"
)

func TestValidateRule(t *testing.T) {
	long := strings.Repeat("x", 101)
	many := `"d0"` + strings.Repeat(`,"d0"`, 1000)
	for _, tc := range []struct{ body, want string }{
		{`{"name":"","severity":"info","condition":{"type":"offline","for":"1m"}}`, "name: "},
		{`{"name":"` + long + `","severity":"info","condition":{"type":"offline","for":"1m"}}`, "name: "},
		{`{"name":"a\u0007b","severity":"info","condition":{"type":"offline","for":"1m"}}`, "name: "},
		{`{"name":"a","severity":"loud","condition":{"type":"offline","for":"1m"}}`, "severity: must be one of info, warning, critical"},
		{`{"name":"a","selector":{"devices":["bad id!"]},"severity":"info","condition":{"type":"offline","for":"1m"}}`, "selector.devices[0]: "},
		{`{"name":"a","selector":{"devices":[` + many + `]},"severity":"info","condition":{"type":"offline","for":"1m"}}`, "selector.devices: at most 1000"},
		{`{"name":"a","selector":{"labels":{"":"x"}},"severity":"info","condition":{"type":"offline","for":"1m"}}`, "selector.labels: "},
		{`{"name":"a","severity":"info","condition":{"type":"threshold","metric":"1bad","op":">","value":1}}`, "condition.metric: must match"},
		{`{"name":"a","severity":"info","condition":{"type":"threshold","metric":"t","op":"=>","value":1}}`, "condition.op: must be one of >, >=, <, <=, ==, !="},
		{`{"name":"a","severity":"info","condition":{"type":"threshold","metric":"t","op":">"}}`, "condition.value: must be a finite number"},
		{`{"name":"a","severity":"info","condition":{"type":"threshold","metric":"t","op":">","value":1,"for":"25h"}}`, "condition.for: must be between 0s and 24h"},
		{`{"name":"a","severity":"info","condition":{"type":"threshold","metric":"t","op":">","value":1,"for":"-1s"}}`, "condition.for: "},
		{`{"name":"a","severity":"info","condition":{"type":"threshold","metric":"t","op":">","value":80,"clear":85}}`, "condition.clear: must be <= value for >"},
		{`{"name":"a","severity":"info","condition":{"type":"threshold","metric":"t","op":"<","value":80,"clear":75}}`, "condition.clear: must be >= value for <"},
		{`{"name":"a","severity":"info","condition":{"type":"threshold","metric":"t","op":"==","value":80,"clear":80}}`, "condition.clear: not allowed with =="},
		{`{"name":"a","severity":"info","condition":{"type":"threshold","metric":"t","op":">","value":1,"count":3}}`, "condition.count: not allowed"},
		{`{"name":"a","severity":"info","condition":{"type":"offline"}}`, "condition.for: required"},
		{`{"name":"a","severity":"info","condition":{"type":"offline","for":"1m","metric":"t"}}`, "condition.metric: not allowed"},
		{`{"name":"a","severity":"info","condition":{"type":"no_data","for":"1m"}}`, "condition.metric: must match"},
		{`{"name":"a","severity":"info","condition":{"type":"no_data","metric":"t"}}`, "condition.for: required"},
		{`{"name":"a","severity":"info","condition":{"type":"rejections","window":"1m"}}`, "condition.count: must be between"},
		{`{"name":"a","severity":"info","condition":{"type":"rejections","count":0,"window":"1m"}}`, "condition.count: must be between"},
		{`{"name":"a","severity":"info","condition":{"type":"rejections","count":3,"window":"500ms"}}`, "condition.window: must be between 1s and 24h"},
		{`{"name":"a","severity":"info","condition":{"type":"rejections","count":3,"window":"1m","for":"1m"}}`, "condition.for: not allowed"},
		{`{"name":"a","severity":"info","condition":{"type":"gaps"}}`, "condition.count: must be between 0 and 1000000"},
		{`{"name":"a","severity":"info","condition":{"type":"gaps","count":-1}}`, "condition.count: must be between 0 and 1000000"},
		{`{"name":"a","severity":"info","condition":{"type":"gaps","count":1,"window":"1m"}}`, "condition.window: not allowed"},
		{`{"name":"a","severity":"info","condition":{"type":"gaps","count":1,"for":"1m"}}`, "condition.for: not allowed"},
		{`{"name":"a","severity":"info","condition":{"type":"bogus"}}`, "condition.type: must be one of threshold, offline, no_data, rejections, gaps"},
	} {
		var spec alerts.RuleSpec
		if err := json.Unmarshal([]byte(tc.body), &spec); err != nil {
			t.Fatalf("%s: %v", tc.body, err)
		}
		err := spec.Validate()
		if err == nil || !strings.Contains(err.Error(), ": "+tc.want) {
			t.Errorf("%.90s: %v; want message starting %q", tc.body, err, tc.want)
		}
	}
	ok := `{"name":"hot pumps","selector":{"devices":["pump-1"],"labels":{"site":"north"}},"severity":"warning","condition":{"type":"threshold","metric":"temp","op":">","value":80,"for":"30s","clear":75}}`
	var spec alerts.RuleSpec
	if err := json.Unmarshal([]byte(ok), &spec); err != nil || spec.Validate() != nil {
		t.Fatalf("the contract's example refused: %v %v", err, spec.Validate())
	}
}
