package telemetry

import "strings"

// Kind is what a device message is, whichever transport carried it: the
// MQTT topic, the HTTP path or the frame's "type" says it. Topic, ParseTopic
// and DeviceACL are the one spelling of the MQTT topics; every other form
// (the embedded broker's ACL check, Mosquitto dynamic-security roles) is
// generated from them.
type Kind uint8

// Message kinds. KindFrame is a WebSocket frame, whose "type" says what it
// is; the others name one MQTT topic of a device.
const (
	KindFrame         Kind = iota // WebSocket: the frame's "type" decides
	KindTelemetry                 // device -> hub: devices/{id}/telemetry
	KindCommandResult             // device -> hub: devices/{id}/commands/result
	KindCommands                  // hub -> device: devices/{id}/commands
	KindErrors                    // hub -> device: devices/{id}/errors
	KindStateReported             // device -> hub: devices/{id}/state/reported, a merge patch of the reported state
	KindStateDesired              // hub -> device: devices/{id}/state/desired, {"desired","delta","version"}
)

// TopicPrefix starts every device topic: devices/{id}/...
const TopicPrefix = "devices/"

// kindSuffix is each kind's topic after devices/{id}.
var kindSuffix = [...]string{
	KindTelemetry:     "/telemetry",
	KindCommandResult: "/commands/result",
	KindCommands:      "/commands",
	KindErrors:        "/errors",
	KindStateReported: "/state/reported",
	KindStateDesired:  "/state/desired",
}

// frameType is the frame "type" a payload of each kind has when the
// device leaves it out (the topic or path already says it).
var frameType = [...]string{
	KindTelemetry:     TypeTelemetry,
	KindCommandResult: TypeCommandResult,
}

// Access is what a device may do with a topic.
type Access uint8

// Accesses. A device publishes what it sends to the hub and subscribes to
// what the hub sends it.
const (
	Publish Access = 1 << iota
	Subscribe
)

// kindAccess is the device ACL: the only table of what a device may do
// with its own topics. Nothing else is allowed: no other device, no
// wildcard, no $SYS.
var kindAccess = [...]Access{
	KindTelemetry:     Publish,
	KindCommandResult: Publish,
	KindCommands:      Subscribe,
	KindErrors:        Subscribe,
	KindStateReported: Publish,
	KindStateDesired:  Subscribe,
}

// Topic returns the MQTT topic of device id for k, or "" for KindFrame.
func Topic(id string, k Kind) string {
	if k == KindFrame || int(k) >= len(kindSuffix) {
		return ""
	}
	return TopicPrefix + id + kindSuffix[k]
}

// ParseTopic splits a device topic into the device id and the kind. ok is
// false for anything else: another prefix, an empty id, an id holding a
// wildcard, or an unknown suffix (wildcard filters included).
func ParseTopic(topic string) (id string, k Kind, ok bool) {
	rest, found := strings.CutPrefix(topic, TopicPrefix)
	if !found {
		return "", 0, false
	}
	i := strings.IndexByte(rest, '/')
	if i <= 0 {
		return "", 0, false
	}
	id, suffix := rest[:i], rest[i:]
	if strings.ContainsAny(id, "+#") {
		return "", 0, false
	}
	for k := KindTelemetry; int(k) < len(kindSuffix); k++ {
		if suffix == kindSuffix[k] {
			return id, k, true
		}
	}
	return "", 0, false
}

// ACLRule is one topic a device may use and how.
type ACLRule struct {
	Kind   Kind
	Topic  string
	Access Access
}

// DeviceACL returns everything device id may do, one rule per topic: the
// source every ACL form is generated from.
func DeviceACL(id string) []ACLRule {
	rules := make([]ACLRule, 0, len(kindAccess)-1)
	for k := KindTelemetry; int(k) < len(kindAccess); k++ {
		rules = append(rules, ACLRule{Kind: k, Topic: Topic(id, k), Access: kindAccess[k]})
	}
	return rules
}

// Allowed reports whether device id may use topic with access a (exactly
// one of Publish, Subscribe): DeviceACL as a check, without allocating,
// for a broker's ACL hook. A topic filter with wildcards is never allowed.
func Allowed(id, topic string, a Access) bool {
	tid, k, ok := ParseTopic(topic)
	return ok && id != "" && tid == id && kindAccess[k]&a != 0
}
