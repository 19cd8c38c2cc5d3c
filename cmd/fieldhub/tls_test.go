package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// writeCert writes a self-signed certificate for 127.0.0.1 and returns the
// file paths and a pool that trusts it.
func writeCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
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
	kb, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTLS serves HTTPS and WSS when a certificate is configured.
func TestTLS(t *testing.T) {
	influx := startInflux(t)
	certFile, keyFile, pool := writeCert(t)
	addr := freePort(t)
	env := map[string]string{
		"FIELDHUB_HTTP_ADDR": addr, "FIELDHUB_MQTT_ADDR": freePort(t), "FIELDHUB_MQTT_TLS_ADDR": freePort(t),
		"FIELDHUB_DATA_DIR": t.TempDir(), "FIELDHUB_INFLUX_URL": influx.URL, "FIELDHUB_INFLUX_BUCKET": influx.Bucket,
		"FIELDHUB_ADMIN_TOKEN": "tls-admin", "FIELDHUB_TLS_CERT": certFile, "FIELDHUB_TLS_KEY": keyFile,
	}
	var out syncBuf
	runCtx, stop := newCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, []string{"fieldhub", "serve"}, func(k string) string { return env[k] }, &out, &out)
	}()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	waitUntil(t, "HTTPS health", loadWait, func() bool {
		resp, err := client.Get("https://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})
	if resp, err := http.Get("http://" + addr + "/healthz"); err == nil && resp.StatusCode == 200 {
		t.Error("plain HTTP served although TLS is configured")
	}
	h := &hub{url: "https://" + addr}
	req, _ := http.NewRequest("POST", h.url+"/api/v1/devices", strings.NewReader(`{"id":"secure-1"}`))
	req.Header.Set("Authorization", "Bearer tls-admin")
	resp, err := client.Do(req)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("create over HTTPS: %v %v", resp, err)
	}
	var created struct{ Token string }
	_ = jsonDecode(resp, &created)
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	c, _, err := d.Dial("wss://"+addr+"/ws/device", http.Header{"Authorization": {"Bearer " + created.Token}})
	if err != nil {
		t.Fatalf("WSS: %v", err)
	}
	defer c.Close()
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	var pong map[string]any
	if err := c.ReadJSON(&pong); err != nil || pong["type"] != "pong" {
		t.Fatalf("pong over WSS: %v %v", pong, err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
