package compat

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"testing"

	"golang.org/x/crypto/chacha20"
	"golang.org/x/crypto/chacha20poly1305"
)

// Independent reference implementation of the KES ciphertext construction
// (spec/kes-api.md §6.2-6.3), written from the spec, used to check that kmsd's
// ciphertexts are the KES format and vice versa (§16 item 30).

func refAEAD(alg string, key, iv []byte) (cipher.AEAD, error) {
	switch alg {
	case "AES256":
		m := hmac.New(sha256.New, key)
		m.Write(iv)
		block, err := aes.NewCipher(m.Sum(nil))
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(block)
	case "ChaCha20":
		k, err := chacha20.HChaCha20(key, iv)
		if err != nil {
			return nil, err
		}
		return chacha20poly1305.New(k)
	default:
		return nil, fmt.Errorf("unknown algorithm %q", alg)
	}
}

func refEncrypt(alg string, key, plaintext, ad []byte) ([]byte, error) {
	random := randBytes(28)
	iv, nonce := random[:16], random[16:]
	aead, err := refAEAD(alg, key, iv)
	if err != nil {
		return nil, err
	}
	out := aead.Seal(nil, nonce, plaintext, ad)
	out = append(out, iv...)
	return append(out, nonce...), nil
}

func refDecrypt(alg string, key, ciphertext, ad []byte) ([]byte, error) {
	if len(ciphertext) <= 28 {
		return nil, errors.New("ciphertext too short")
	}
	n := len(ciphertext)
	iv, nonce := ciphertext[n-28:n-12], ciphertext[n-12:]
	aead, err := refAEAD(alg, key, iv)
	if err != nil {
		return nil, err
	}
	return aead.Open(nil, nonce, ciphertext[:n-28], ad)
}

type vector struct {
	ID         string `json:"id"`
	Format     string `json:"format"`
	Algorithm  string `json:"algorithm"`
	Key        []byte `json:"key"`
	Context    []byte `json:"context"`
	Ciphertext []byte `json:"ciphertext"`
	Plaintext  []byte `json:"plaintext"`
}

type vectorFile struct {
	Vectors []vector `json:"vectors"`
	APIKeys []struct {
		APIKey   string `json:"api_key"`
		Identity string `json:"identity"`
	} `json:"api_keys"`
}

func loadVectors(t testing.TB) vectorFile {
	t.Helper()
	b, err := os.ReadFile("testdata/kes-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectorFile
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Vectors) != 8 {
		t.Fatalf("expected 8 vectors, got %d", len(v.Vectors))
	}
	return v
}

// TestReferenceCrypto checks the reference implementation itself against the
// raw-format vectors, so that a failure in item 30 points at kmsd.
func TestReferenceCrypto(t *testing.T) {
	vf := loadVectors(t)
	for _, v := range vf.Vectors {
		if v.Format != "raw" {
			continue
		}
		pt, err := refDecrypt(v.Algorithm, v.Key, v.Ciphertext, v.Context)
		if err != nil {
			t.Errorf("%s: %v", v.ID, err)
			continue
		}
		if !bytes.Equal(pt, v.Plaintext) {
			t.Errorf("%s: plaintext %x, want %x", v.ID, pt, v.Plaintext)
		}
		ct, err := refEncrypt(v.Algorithm, v.Key, v.Plaintext, v.Context)
		if err != nil {
			t.Fatal(err)
		}
		if len(ct) != len(v.Plaintext)+44 {
			t.Errorf("%s: ciphertext length %d", v.ID, len(ct))
		}
		if pt, err := refDecrypt(v.Algorithm, v.Key, ct, v.Context); err != nil || !bytes.Equal(pt, v.Plaintext) {
			t.Errorf("%s: round trip failed: %v", v.ID, err)
		}
	}
	for _, k := range vf.APIKeys {
		key := mustAPIKey(t, k.APIKey)
		if got := key.Identity().String(); got != k.Identity {
			t.Errorf("identity of %s = %s, want %s", k.APIKey, got, k.Identity)
		}
	}
}
