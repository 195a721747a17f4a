package main

import (
	"crypto/x509"
	"testing"
)

func TestAPIKeyIdentity(t *testing.T) {
	for _, tc := range []struct{ key, id string }{
		{"kes:v1:AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc", "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22"},
		{"kes:v1:AGaV6VXHasF0FnaB60WdCOeTZ8eTIDikL4zlN16c8NAs", "ea9826089311fe44d7590408ede9150f7c637b6cab0a91ee6fe1aa5d9fb366f6"},
		{"AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc", "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22"}, // prefix optional
	} {
		priv, err := parseAPIKey(tc.key)
		if err != nil {
			t.Fatalf("parseAPIKey(%q): %v", tc.key, err)
		}
		id, err := apiKeyIdentity(priv)
		if err != nil {
			t.Fatal(err)
		}
		if id != tc.id {
			t.Errorf("identity of %q = %s, want %s", tc.key, id, tc.id)
		}
		cert, err := apiKeyCertificate(priv)
		if err != nil {
			t.Fatal(err)
		}
		if got := spkiIdentity(cert.Leaf.RawSubjectPublicKeyInfo); got != tc.id {
			t.Errorf("certificate identity = %s, want %s", got, tc.id)
		}
		if cert.Leaf.Subject.CommonName != tc.id || cert.Leaf.IsCA ||
			len(cert.Leaf.ExtKeyUsage) != 1 || cert.Leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
			t.Errorf("certificate template differs from KES: CN=%q IsCA=%v EKU=%v",
				cert.Leaf.Subject.CommonName, cert.Leaf.IsCA, cert.Leaf.ExtKeyUsage)
		}
		if err := cert.Leaf.CheckSignature(cert.Leaf.SignatureAlgorithm, cert.Leaf.RawTBSCertificate, cert.Leaf.Signature); err != nil {
			t.Errorf("certificate is not self-signed: %v", err)
		}
	}
}

func TestParseAPIKeyInvalid(t *testing.T) {
	for _, k := range []string{
		"",
		"kes:v1:",
		"kes:v1:not base64!",
		"kes:v1:AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYA==", // 32 bytes
		"kes:v1:AT9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc", // type 1
	} {
		if _, err := parseAPIKey(k); err == nil {
			t.Errorf("parseAPIKey(%q) succeeded, want an error", k)
		}
	}
}
