package cluster

import (
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// TestCopyingStoreKeepsItsOwnPacket: what paho's resume later changes in
// the store is not the packet a Publish is writing.
func TestCopyingStoreKeepsItsOwnPacket(t *testing.T) {
	s := newCopyingStore()
	s.Open()
	defer s.Close()
	sent := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	sent.Qos, sent.MessageID, sent.TopicName, sent.Payload = 1, 7, "fieldhub/registry", []byte(`{"o":"a"}`)
	s.Put("o.7", sent)
	stored, ok := s.Get("o.7").(*packets.PublishPacket)
	if !ok || stored == sent {
		t.Fatalf("the store holds %p, the sender %p: shared", stored, sent)
	}
	stored.Dup = true // what resume does
	if sent.Dup {
		t.Fatal("setting DUP in the store changed the packet being sent")
	}
	if stored.TopicName != sent.TopicName || string(stored.Payload) != string(sent.Payload) || stored.MessageID != 7 {
		t.Fatalf("stored copy differs: %+v", stored)
	}
	ack := packets.NewControlPacket(packets.Pubrel)
	s.Put("o.8", ack)
	if s.Get("o.8") != ack {
		t.Fatal("a packet other than PUBLISH was copied")
	}
}
