package mqtt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
)

func TestMQTTOverWebSocket(t *testing.T) {
	r := newRig(t, Options{})
	srv := httptest.NewServer(http.HandlerFunc(r.broker.ServeWebSocket))
	defer srv.Close()
	wsURL := "ws" + strings.TrimPrefix(srv.URL, "http") + "/mqtt"
	c := paho.NewClient(paho.NewClientOptions().AddBroker(wsURL).SetClientID("d1").
		SetUsername("d1").SetPassword(r.tokens["d1"]).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect over WebSocket: %v", tok.Error())
	}
	defer c.Disconnect(50)
	if pt := c.Publish("devices/d1/telemetry", 1, false, `{"metrics":{"temp":1}}`); !pt.WaitTimeout(5*time.Second) || pt.Error() != nil {
		t.Fatalf("publish: %v", pt.Error())
	}
	if n := r.stored(t); n != 1 {
		t.Fatalf("stored %d", n)
	}
	// A page from another site cannot open the broker's socket.
	_, resp, err := websocket.DefaultDialer.Dial(wsURL, http.Header{"Origin": {"https://evil.example"}, "Sec-WebSocket-Protocol": {"mqtt"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign origin: %v %v", resp, err)
	}
}

func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fieldhub-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

func TestMQTTOverTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, Options{TLSListener: ln})
	c := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + ln.Addr().String()).SetClientID("d1").
		SetUsername("d1").SetPassword(r.tokens["d1"]).SetAutoReconnect(false).
		SetTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect over TLS: %v", tok.Error())
	}
	defer c.Disconnect(50)
	if pt := c.Publish("devices/d1/telemetry", 1, false, `{"metrics":{"temp":1}}`); !pt.WaitTimeout(5*time.Second) || pt.Error() != nil {
		t.Fatalf("publish: %v", pt.Error())
	}
	if n := r.stored(t); n != 1 {
		t.Fatalf("stored %d", n)
	}
}
