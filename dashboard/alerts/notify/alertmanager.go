package notify

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Alertmanager label names the notifier sets itself; device labels never
// override them.
const (
	labelAlertname = "alertname"
	labelDevice    = "device"
	labelSeverity  = "severity"
	labelRuleID    = "rule_id"
)

// alertmanager posts batches to Alertmanager's v2 API.
type alertmanager struct {
	client  *http.Client
	url     string // .../api/v2/alerts; never logged
	timeout time.Duration
	now     func() time.Time
}

// postableAlert is Alertmanager's v2 postableAlert (api/v2/openapi.yaml):
// labels required, the rest optional. Without endsAt Alertmanager
// resolves the alert after its resolve_timeout unless it is posted again.
type postableAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	StartsAt     string            `json:"startsAt,omitempty"`
	EndsAt       string            `json:"endsAt,omitempty"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

// send posts the whole batch in one request, so every delivery shares
// the outcome; except when Alertmanager refuses the batch itself (a 4xx:
// it refuses a whole post for one alert it finds invalid), then each is
// posted alone, so one bad alert does not hold back the others forever.
func (a *alertmanager) send(ctx context.Context, started time.Time, batch []Delivery) []result {
	results := a.post(ctx, batch)
	if len(batch) == 1 || results[0].ok || results[0].err.receiver {
		return results
	}
	for i := range batch {
		if ctx.Err() != nil {
			results[i] = result{} // untried
			continue
		}
		results[i] = a.post(ctx, batch[i:i+1])[0]
	}
	return results
}

// post sends batch in one request.
func (a *alertmanager) post(ctx context.Context, batch []Delivery) []result {
	alerts := make([]postableAlert, len(batch))
	for i, d := range batch {
		alerts[i] = toPostable(d.Notification)
	}
	results := make([]result, len(batch))
	body, err := json.Marshal(alerts)
	if err != nil {
		for i := range results {
			results[i].err = &sendError{msg: "encode alerts: " + err.Error()}
		}
		return results
	}
	h := http.Header{"Content-Type": {"application/json"}}
	serr := post(ctx, a.client, a.timeout, a.url, h, body)
	for i := range results {
		results[i] = result{ok: serr == nil, err: serr}
	}
	return results
}

// AlertmanagerLabels are the labels an alert has in Alertmanager:
// alertname (the rule's name), device, severity and rule_id, plus the
// device's labels with names made valid ([a-zA-Z_][a-zA-Z0-9_]*), never
// replacing those four. Two device labels that sanitise to the same name
// keep the value of the first in sorted order, so an alert's labels (its
// Alertmanager fingerprint) are the same on every post.
func AlertmanagerLabels(n Notification) map[string]string {
	out := make(map[string]string, len(n.Labels)+4)
	keys := make([]string, 0, len(n.Labels))
	for k := range n.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name, v := sanitizeLabelName(k), labelValue(n.Labels[k])
		if name == "" || v == "" {
			continue // Alertmanager treats an empty value as no label
		}
		if _, taken := out[name]; !taken {
			out[name] = v
		}
	}
	alertname := n.Rule
	if alertname == "" {
		alertname = n.RuleID
	}
	for k, v := range map[string]string{labelAlertname: alertname, labelDevice: n.Device, labelSeverity: n.Severity, labelRuleID: n.RuleID} {
		if v = labelValue(v); v != "" {
			out[k] = v
		} else {
			delete(out, k) // a device label must not stand in for ours
		}
	}
	return out
}

// sanitizeLabelName maps a device label name to Prometheus's label name
// rule: invalid characters become '_', a leading digit gets a '_' prefix.
func sanitizeLabelName(k string) string {
	if k == "" {
		return ""
	}
	var b strings.Builder
	for i, r := range k {
		switch {
		case r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z':
			b.WriteRune(r)
		case r >= '0' && r <= '9':
			if i == 0 {
				b.WriteByte('_')
			}
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// labelValue keeps values valid UTF-8, which Alertmanager requires.
func labelValue(v string) string { return strings.ToValidUTF8(v, "\uFFFD") }

func toPostable(n Notification) postableAlert {
	p := postableAlert{Labels: AlertmanagerLabels(n), Annotations: map[string]string{}}
	if n.Summary != "" {
		p.Annotations["summary"] = labelValue(n.Summary)
	}
	if n.Value != nil {
		p.Annotations["value"] = strconv.FormatFloat(*n.Value, 'g', -1, 64)
	}
	if !n.StartsAt.IsZero() {
		p.StartsAt = amTime(n.StartsAt)
	}
	if n.Kind == KindResolved {
		end := n.EndsAt
		if end.IsZero() {
			end = n.At
		}
		if end.Before(n.StartsAt) {
			end = n.StartsAt // Alertmanager refuses an end before the start
		}
		if !end.IsZero() {
			p.EndsAt = amTime(end)
		}
	}
	return p
}

func amTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }
