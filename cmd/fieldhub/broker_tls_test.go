package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/bridge/cluster/mosquittotest"
)

// TestExternalBrokerTLS: a hub reaches its broker over TLS with a client
// certificate (Mosquitto's listener requires one); readings of an MQTT
// device on the broker cross that link. A hub without the certificate,
// or that does not trust the broker's, stays out and says why.
func TestExternalBrokerTLS(t *testing.T) {
	influx := startInflux(t)
	mq := mosquittotest.StartWith(t, mosquittotest.Options{TLS: true})
	base := map[string]string{
		"FIELDHUB_MQTT_BROKER":          mq.TLSURL,
		"FIELDHUB_MQTT_BROKER_USERNAME": mosquittotest.HubUser,
		"FIELDHUB_MQTT_BROKER_PASSWORD": mosquittotest.HubPass,
	}
	for _, tc := range []struct {
		name, ca, cert, key string
		want                string // in the log when the hub stays out
	}{
		{name: "client certificate", ca: mq.TLS.CA, cert: mq.TLS.ClientCert, key: mq.TLS.ClientKey},
		{name: "no client certificate", ca: mq.TLS.CA, want: "certificate required"},
		{name: "broker not trusted", cert: mq.TLS.ClientCert, key: mq.TLS.ClientKey, want: "certificate signed by unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{
				"FIELDHUB_MQTT_BROKER_CA": tc.ca, "FIELDHUB_MQTT_BROKER_CERT": tc.cert, "FIELDHUB_MQTT_BROKER_KEY": tc.key,
				"FIELDHUB_MQTT_BROKER_DYNSEC": "true", "FIELDHUB_INSTANCE_ID": "tls-" + strings.ReplaceAll(tc.name, " ", "-"),
			}
			for k, v := range base {
				env[k] = v
			}
			h := startHub(t, influx, env)
			if tc.want != "" {
				waitUntil(t, "the hub to say why it cannot connect", loadWait, func() bool {
					return strings.Contains(grepLines(h.stderr.String(), "cannot connect to the broker"), tc.want)
				})
				_, m := h.api(t, "GET", "/readyz", "", nil)
				if s := m["checks"].(map[string]any)["mqtt"].(map[string]any)["status"]; s != "disconnected" {
					t.Fatalf("readyz mqtt %v, want disconnected", s)
				}
				if strings.Contains(h.stderr.String(), mosquittotest.HubPass) {
					t.Fatal("the broker password is in the log")
				}
				return
			}
			h.waitBroker(t)
			// The device's broker client was created over the TLS link
			// (dynamic security), and its readings come back over it.
			id := "tls-dev"
			token := h.createDevice(t, id)
			var dev paho.Client
			waitUntil(t, "the device connected to mosquitto", loadWait, func() bool {
				o := paho.NewClientOptions().SetProtocolVersion(4).AddBroker(mq.URL).SetClientID(id).SetUsername(id).SetPassword(token).
					SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
				c := paho.NewClient(o)
				if tok := c.Connect(); !tok.WaitTimeout(loadWait) || tok.Error() != nil {
					return false
				}
				dev = c
				return true
			})
			defer dev.Disconnect(50)
			for i := range 5 {
				tok := dev.Publish("devices/"+id+"/telemetry", 1, false, fmt.Sprintf(`{"id":"%d","metrics":{"v":%d}}`, i, i))
				if !tok.WaitTimeout(loadWait) || tok.Error() != nil {
					t.Fatalf("publish: %v", tok.Error())
				}
			}
			waitUntil(t, "the readings taken over TLS", loadWait, func() bool {
				return strings.Contains(h.metricLines(t, "fieldhub_cluster_messages_acked_total"), "fieldhub_cluster_messages_acked_total 5")
			})
		})
	}
}
