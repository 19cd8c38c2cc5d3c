package devices

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"strings"
)

// Token prefixes make leaked secrets easy to grep for and to tell apart.
const (
	DeviceTokenPrefix   = "fhd_"
	OperatorTokenPrefix = "fho_"
	tokenBytes          = 24 // 192 bits from crypto/rand
)

// TokenHash is the SHA-256 of a token: all the hub keeps of a secret.
type TokenHash [sha256.Size]byte

// HashToken returns the hash under which a token is stored and looked up.
func HashToken(token string) TokenHash { return sha256.Sum256([]byte(token)) }

// String returns a short, non-reversible fingerprint for logs and ids.
func (h TokenHash) String() string { return hex.EncodeToString(h[:4]) }

// Equal compares two hashes in constant time.
func (h TokenHash) Equal(o TokenHash) bool { return subtle.ConstantTimeCompare(h[:], o[:]) == 1 }

// newToken returns a fresh random token with the given prefix.
func newToken(prefix string) string {
	var b [tokenBytes]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux (Go 1.24+)
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// newDeviceID generates an id for a device created without one.
func newDeviceID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "dev-" + hex.EncodeToString(b[:])
}

// LooksLikeToken reports whether s has the shape of a token of this prefix;
// used to refuse obviously wrong input before any lookup.
func LooksLikeToken(s, prefix string) bool {
	return strings.HasPrefix(s, prefix) && len(s) <= 128
}
