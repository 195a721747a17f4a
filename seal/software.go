package seal

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"io"
)

// Software is an in-process Sealer for development and tests: AES-256-GCM
// under a key held in memory, output nonce(12) || ciphertext || tag. It
// offers none of an HSM's protection. Safe for concurrent use.
type Software struct {
	aead cipher.AEAD // nil if the key was not 32 bytes
	id   string
}

var _ Sealer = (*Software)(nil)

// SoftwareMechanism is Software's Mechanism.
const SoftwareMechanism = "software-aes-gcm"

// NewSoftware returns a Software sealer with the 32-byte key (copied) and
// key id. With a key of any other size, Wrap and Unwrap return
// ErrInvalidKeySize.
func NewSoftware(key []byte, id string) *Software {
	s := &Software{id: id}
	if len(key) == keySize {
		block, err := aes.NewCipher(key)
		if err == nil {
			s.aead, _ = cipher.NewGCM(block)
		}
	}
	return s
}

// KeyID returns the id given to NewSoftware.
func (s *Software) KeyID() string { return s.id }

// Mechanism returns SoftwareMechanism.
func (s *Software) Mechanism() string { return SoftwareMechanism }

// Wrap encrypts plaintext with aad under a random nonce.
func (s *Software) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	out := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	if _, err := io.ReadFull(rand.Reader, out); err != nil {
		return nil, fmt.Errorf("seal: software wrap: %w", err)
	}
	return s.aead.Seal(out, out, plaintext, aad), nil
}

// Unwrap reverses Wrap; ErrDecrypt if ciphertext or aad do not match.
func (s *Software) Unwrap(ctx context.Context, ciphertext, aad []byte) ([]byte, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	n := s.aead.NonceSize()
	if len(ciphertext) < n+s.aead.Overhead() {
		return nil, ErrDecrypt
	}
	p, err := s.aead.Open(nil, ciphertext[:n], ciphertext[n:], aad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return p, nil
}

func (s *Software) check(ctx context.Context) error {
	if s.aead == nil {
		return fmt.Errorf("seal: software sealer %q: %w", s.id, ErrInvalidKeySize)
	}
	return ctx.Err()
}

// String returns "seal.Software(KEYID)"; it never shows the key.
func (s *Software) String() string { return "seal.Software(" + s.id + ")" }

// Format implements fmt.Formatter: every verb prints String.
func (s *Software) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }
