package api

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"strings"
	"time"
)

// apiKeyPrefix starts the text form of an API key.
const apiKeyPrefix = "kes:v1:"

// apiKeyEd25519 is the type byte of an Ed25519 API key.
const apiKeyEd25519 = 0

// APIKey is a KES API key (spec §4.3): an Ed25519 private key whose
// public key identifies the client. Its text form, String, is secret. It
// formats (%v, %s, ...) and logs as its identity only. The zero value is
// not a key.
type APIKey struct {
	key ed25519.PrivateKey
}

// GenerateAPIKey returns a new random API key. A nil rand means
// crypto/rand.
func GenerateAPIKey(random io.Reader) (APIKey, error) {
	if random == nil {
		random = rand.Reader
	}
	_, priv, err := ed25519.GenerateKey(random)
	if err != nil {
		return APIKey{}, fmt.Errorf("api: generate API key: %w", err)
	}
	return APIKey{key: priv}, nil
}

// ParseAPIKey parses "kes:v1:" + base64(0x00 || seed), with or without
// the prefix.
func ParseAPIKey(s string) (APIKey, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, apiKeyPrefix))
	if err != nil {
		return APIKey{}, errors.New("api: invalid API key: not base64")
	}
	defer clear(b)
	if len(b) != 1+ed25519.SeedSize {
		return APIKey{}, errors.New("api: invalid API key: wrong length")
	}
	if b[0] != apiKeyEd25519 {
		return APIKey{}, errors.New("api: invalid API key: unsupported key type")
	}
	return APIKey{key: ed25519.NewKeyFromSeed(b[1:])}, nil
}

// String returns the secret text form "kes:v1:...". Empty for the zero
// value.
func (k APIKey) String() string {
	if k.key == nil {
		return ""
	}
	b := make([]byte, 0, 1+ed25519.SeedSize)
	b = append(append(b, apiKeyEd25519), k.key.Seed()...)
	defer clear(b)
	return apiKeyPrefix + base64.StdEncoding.EncodeToString(b)
}

// Identity returns the KES identity of the key: hex SHA-256 of the DER
// SubjectPublicKeyInfo of its public key. Empty for the zero value.
func (k APIKey) Identity() string {
	if k.key == nil {
		return ""
	}
	spki, err := x509.MarshalPKIXPublicKey(k.key.Public())
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

// PrivateKey returns the Ed25519 private key (nil for the zero value),
// for writing it to a file. It is the secret: do not modify or log it.
func (k APIKey) PrivateKey() ed25519.PrivateKey { return k.key }

// Format prints the key as APIKey(<identity>) for every verb, so the
// secret never reaches a log line or error message by accident.
func (k APIKey) Format(f fmt.State, _ rune) {
	fmt.Fprintf(f, "APIKey(%s)", k.Identity())
}

// LogValue logs the identity only.
func (k APIKey) LogValue() slog.Value { return slog.StringValue(k.Identity()) }

// Certificate returns a self-signed client certificate for the key:
// random 128-bit serial, CN = identity, valid from now for 90 days,
// DigitalSignature, ClientAuth, not a CA. opts may adjust the template.
func (k APIKey) Certificate(opts ...func(*x509.Certificate)) (tls.Certificate, error) {
	if k.key == nil {
		return tls.Certificate{}, errors.New("api: certificate: zero API key")
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("api: certificate serial: %w", err)
	}
	now := time.Now().UTC()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: k.Identity()},
		NotBefore:             now,
		NotAfter:              now.Add(90 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	for _, opt := range opts {
		opt(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.key.Public(), k.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("api: create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("api: parse certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k.key, Leaf: leaf}, nil
}
