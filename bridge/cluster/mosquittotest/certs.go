package mosquittotest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// writeCerts writes into dir a CA, a server certificate for 127.0.0.1 and
// a client certificate, all signed by that CA, valid for a day.
func writeCerts(dir string) (TLSFiles, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return TLSFiles{}, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fieldhub test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return TLSFiles{}, fmt.Errorf("CA: %w", err)
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return TLSFiles{}, err
	}
	f := TLSFiles{
		CA:         filepath.Join(dir, "ca.pem"),
		ClientCert: filepath.Join(dir, "client.pem"),
		ClientKey:  filepath.Join(dir, "client-key.pem"),
	}
	if err := writePEM(f.CA, "CERTIFICATE", caDER); err != nil {
		return TLSFiles{}, err
	}
	leaves := []struct {
		name, certFile, keyFile string
		usage                   x509.ExtKeyUsage
		ips                     []net.IP
	}{
		{"127.0.0.1", filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"), x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")}},
		{"fieldhub", f.ClientCert, f.ClientKey, x509.ExtKeyUsageClientAuth, nil},
	}
	for i, l := range leaves {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return TLSFiles{}, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: l.name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{l.usage}, IPAddresses: l.ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return TLSFiles{}, fmt.Errorf("certificate %s: %w", l.name, err)
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return TLSFiles{}, err
		}
		if err := writePEM(l.certFile, "CERTIFICATE", der); err != nil {
			return TLSFiles{}, err
		}
		if err := writePEM(l.keyFile, "EC PRIVATE KEY", kb); err != nil {
			return TLSFiles{}, err
		}
	}
	return f, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
