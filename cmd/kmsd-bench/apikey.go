package main

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
	"math/big"
	"strings"
	"time"
)

const apiKeyPrefix = "kes:v1:"

// parseAPIKey parses a KES API key, "kes:v1:" + base64(0x00 || seed), and
// returns the Ed25519 private key. Like KES, the prefix is optional.
func parseAPIKey(s string) (ed25519.PrivateKey, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(strings.TrimSpace(s), apiKeyPrefix))
	if err != nil {
		return nil, fmt.Errorf("invalid API key: %w", err)
	}
	if len(b) != 1+ed25519.SeedSize {
		return nil, errors.New("invalid API key: wrong length")
	}
	if b[0] != 0 {
		return nil, fmt.Errorf("invalid API key: unsupported type %d", b[0])
	}
	return ed25519.NewKeyFromSeed(b[1:]), nil
}

// spkiIdentity is the KES identity of a public key: hex(sha256(DER SPKI)).
func spkiIdentity(rawSPKI []byte) string {
	sum := sha256.Sum256(rawSPKI)
	return hex.EncodeToString(sum[:])
}

// apiKeyIdentity returns the identity of the API key's public key.
func apiKeyIdentity(priv ed25519.PrivateKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		return "", err
	}
	return spkiIdentity(der), nil
}

// apiKeyCertificate builds the self-signed client certificate KES clients
// derive from an API key (spec §4.3).
func apiKeyCertificate(priv ed25519.PrivateKey) (tls.Certificate, error) {
	id, err := apiKeyIdentity(priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now().UTC()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: id},
		NotBefore:             now,
		NotAfter:              now.Add(90 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}, nil
}
