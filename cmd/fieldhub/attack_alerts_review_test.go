package main

import (
	"testing"
)

// TestAttackAlertsReviewPatchedLabelsEndToEnd: a device moved out of a
// label-selected rule by PATCH /api/v1/devices/{id} keeps its firing
// alert forever through the whole hub: nothing tells the engine of a
// label change (serve.go subscribes only to deletions), and the engine
// skips rules that no longer select the device, so even a clearing
// reading never resolves it (Alertmanager keeps paging; the overview
// keeps the banner).
func TestAttackAlertsReviewPatchedLabelsEndToEnd(t *testing.T) {
	influx := startInflux(t)
	h := startHub(t, influx, nil)
	st, m := h.api(t, "POST", "/api/v1/devices", h.adminToken, map[string]any{"id": "pump-1", "labels": map[string]string{"site": "north"}})
	if st != 201 {
		t.Fatalf("create device: %d %v", st, m)
	}
	dev := dialDevice(t, h, m["token"].(string))
	rule := h.createRule(t, `{"name":"north hot","selector":{"labels":{"site":"north"}},"severity":"warning",
		"condition":{"type":"threshold","metric":"temp","op":">","value":80}}`)
	dev.send(85)
	h.waitAlert(t, rule, "pump-1", "firing")

	if st, m := h.api(t, "PATCH", "/api/v1/devices/pump-1", h.adminToken, map[string]any{"labels": map[string]string{"site": "south"}}); st != 200 {
		t.Fatalf("patch labels: %d %v", st, m)
	}
	dev.send(20)
	h.waitAlert(t, rule, "pump-1", "resolved")
}
