package cluster

import (
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// copyingStore is paho's memory store keeping its own copy of every
// PUBLISH packet. On each (re)connect of a persistent session paho's
// resume sets DUP on the stored packets and sends them again, and a
// Publish made in the same instant, already on its way to the wire, is
// the very packet it finds in the store: paho v1.5.1 then writes the DUP
// bit while its writer reads it, a data race the race detector catches
// (seen under load in TestExternalBrokerTLS). With a copy the two never
// share memory; the worst left is that one QoS 1 message goes out twice,
// which everything the hub publishes at QoS 1 tolerates.
type copyingStore struct{ paho.Store }

func newCopyingStore() copyingStore { return copyingStore{paho.NewMemoryStore()} }

func (s copyingStore) Put(key string, p packets.ControlPacket) {
	if pub, ok := p.(*packets.PublishPacket); ok {
		cp := *pub
		p = &cp
	}
	s.Store.Put(key, p)
}
