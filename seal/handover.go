package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
)

// REK hand-over (design.md §2): a joining node has no stanza and no REK.
// It makes an ephemeral X25519 key (HandoverKey), sends the public half
// to an unsealed member over the node channel (mTLS with the cluster CA),
// and gets back a box that only its private half opens:
//
//	box v1 = [0x01][16 REK fingerprint][32 ephemeral X25519 public key]
//	         [12 nonce][AES-256-GCM(REK) || 16 tag]                  (109 bytes)
//	key    = HKDF-SHA256(secret = X25519(eph, recipient),
//	                     salt = eph public || recipient public,
//	                     info = "kmsd rek handover v1")
//	AAD    = box[:49] (version, fingerprint, ephemeral public) || recipient public
//
// The fingerprint in clear lets the receiver refuse a box for another
// cluster's REK (ErrREKMismatch) before any crypto; the AAD makes it
// authentic; the receiver still recomputes the fingerprint of what it
// decrypted, so a sender cannot pass off another REK under a right label.
const (
	handoverV1    = 1
	handoverInfo  = "kmsd rek handover v1"
	handoverPub   = 32 // X25519 public key size
	handoverNonce = 12

	handoverHeaderSize = 1 + rekIDSize + handoverPub
	handoverBoxSize    = handoverHeaderSize + handoverNonce + rekSize + tagSize

	// HandoverPublicKeySize is the size of HandoverKey.Public: a raw
	// X25519 public key.
	HandoverPublicKeySize = handoverPub
	// HandoverBoxSize is the size of a version-1 hand-over box.
	HandoverBoxSize = handoverBoxSize
)

// ErrHandoverKey is returned by Keyring.Handover for a recipient public
// key that is not a usable X25519 public key (wrong size, low order).
// It is the caller's mistake (400 on the wire).
var ErrHandoverKey = errors.New("seal: invalid hand-over public key")

// HandoverKey is the ephemeral X25519 key of a joining node: it receives
// the REK from a member (Keyring.Handover) and opens the box (Open). Make
// a new one per attempt and Destroy it when done. Safe for concurrent use.
//
// The private key never leaves the process and is never printed: String,
// Format and LogValue show only a fingerprint of the public key. Destroy
// drops the private key; crypto/ecdh keeps its own copy of the scalar,
// which Go gives no way to wipe, until the garbage collector reclaims it.
type HandoverKey struct {
	mu   sync.Mutex
	priv *ecdh.PrivateKey // nil after Destroy
	pub  [handoverPub]byte
}

// NewHandoverKey makes a new random HandoverKey.
func NewHandoverKey() (*HandoverKey, error) {
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("seal: hand-over key: %w", err)
	}
	return newHandoverKey(priv), nil
}

func newHandoverKey(priv *ecdh.PrivateKey) *HandoverKey {
	hk := &HandoverKey{priv: priv}
	copy(hk.pub[:], priv.PublicKey().Bytes())
	return hk
}

// Public returns a copy of the raw 32-byte X25519 public key: what the
// joining node sends to a member.
func (hk *HandoverKey) Public() []byte { return bytes.Clone(hk.pub[:]) }

// Handover seals this keyring's REK for the holder of recipientPub (a
// HandoverKey.Public). Every box uses a fresh ephemeral key and nonce.
// It returns ErrHandoverKey for an unusable public key and ErrSealed if kr
// is nil or destroyed.
func (kr *Keyring) Handover(recipientPub []byte) ([]byte, error) {
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("seal: hand-over: %w", err)
	}
	var nonce [handoverNonce]byte
	if _, err := io.ReadFull(rand.Reader, nonce[:]); err != nil {
		return nil, fmt.Errorf("seal: hand-over: %w", err)
	}
	return kr.handover(recipientPub, eph, nonce[:])
}

// handover is Handover with the ephemeral key and nonce given (golden
// tests). Nothing else may call it: a reused (eph, nonce) pair would
// reuse a GCM nonce under the same key.
func (kr *Keyring) handover(recipientPub []byte, eph *ecdh.PrivateKey, nonce []byte) ([]byte, error) {
	if len(recipientPub) != handoverPub {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrHandoverKey, len(recipientPub), handoverPub)
	}
	peer, err := ecdh.X25519().NewPublicKey(recipientPub)
	if err != nil {
		return nil, ErrHandoverKey
	}
	var rek [rekSize]byte
	defer clear(rek[:])
	if err := kr.copyREK(&rek); err != nil {
		return nil, err
	}
	shared, err := eph.ECDH(peer)
	if err != nil { // a low-order point: the shared secret would be zero
		return nil, ErrHandoverKey
	}
	defer clear(shared)
	box := make([]byte, handoverHeaderSize, handoverBoxSize)
	box[0] = handoverV1
	copy(box[1:], kr.fp[:])
	copy(box[1+rekIDSize:], eph.PublicKey().Bytes())
	aead, err := handoverAEAD(shared, box[1+rekIDSize:handoverHeaderSize], recipientPub)
	if err != nil {
		return nil, err
	}
	box = append(box, nonce...)
	return aead.Seal(box, nonce, rek[:], handoverAAD(box[:handoverHeaderSize], recipientPub)), nil
}

// Open decrypts a box made by Keyring.Handover for this key and returns
// the REK as a Keyring. wantREKID is the cluster's REK id, learnt from
// the replicated state; a box for any other REK is ErrREKMismatch, and a
// box that is not authentic for this key is ErrDecrypt. A malformed box is
// ErrFormat. After Destroy, Open returns ErrSealed.
func (hk *HandoverKey) Open(box []byte, wantREKID string) (*Keyring, error) {
	want, err := hex.DecodeString(wantREKID)
	if err != nil || len(want) != rekIDSize {
		return nil, fmt.Errorf("%w: REK id %q is not %d hex bytes", ErrREKMismatch, wantREKID, rekIDSize)
	}
	if len(box) < 1 || box[0] != handoverV1 {
		return nil, fmt.Errorf("%w: unknown hand-over box version", ErrFormat)
	}
	if len(box) != handoverBoxSize {
		return nil, fmt.Errorf("%w: hand-over box of %d bytes, want %d", ErrFormat, len(box), handoverBoxSize)
	}
	if !bytes.Equal(box[1:1+rekIDSize], want) {
		return nil, fmt.Errorf("%w: box holds REK %x, want %s", ErrREKMismatch, box[1:1+rekIDSize], wantREKID)
	}
	header := box[:handoverHeaderSize]
	ephPub := box[1+rekIDSize : handoverHeaderSize]
	nonce := box[handoverHeaderSize : handoverHeaderSize+handoverNonce]
	body := box[handoverHeaderSize+handoverNonce:]

	hk.mu.Lock()
	priv := hk.priv
	hk.mu.Unlock()
	if priv == nil {
		return nil, ErrSealed
	}
	eph, err := ecdh.X25519().NewPublicKey(ephPub)
	if err != nil {
		return nil, ErrDecrypt
	}
	shared, err := priv.ECDH(eph)
	if err != nil {
		return nil, ErrDecrypt
	}
	defer clear(shared)
	aead, err := handoverAEAD(shared, ephPub, hk.pub[:])
	if err != nil {
		return nil, err
	}
	rek, err := aead.Open(nil, nonce, body, handoverAAD(header, hk.pub[:]))
	if err != nil {
		return nil, ErrDecrypt
	}
	defer clear(rek)
	kr, err := newKeyring(rek)
	if err != nil {
		return nil, err
	}
	if kr.id != wantREKID {
		kr.Destroy()
		return nil, fmt.Errorf("%w: box names %s, decrypted REK is %s", ErrREKMismatch, wantREKID, kr.id)
	}
	return kr, nil
}

// handoverAEAD derives the box key and returns AES-256-GCM under it.
func handoverAEAD(shared, ephPub, recipientPub []byte) (cipher.AEAD, error) {
	salt := make([]byte, 0, 2*handoverPub)
	salt = append(append(salt, ephPub...), recipientPub...)
	key, err := hkdf.Key(sha256.New, shared, salt, handoverInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("seal: hand-over: derive key: %w", err)
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("seal: hand-over: %w", err)
	}
	return cipher.NewGCM(block)
}

// handoverAAD is header || recipient public key.
func handoverAAD(header, recipientPub []byte) []byte {
	aad := make([]byte, 0, len(header)+len(recipientPub))
	return append(append(aad, header...), recipientPub...)
}

// Destroy drops the private key; Open then returns ErrSealed. Public,
// String and LogValue keep working.
func (hk *HandoverKey) Destroy() {
	if hk == nil {
		return
	}
	hk.mu.Lock()
	hk.priv = nil
	hk.mu.Unlock()
}

// fingerprint is the first 8 bytes of SHA-256 of the public key, in hex.
func (hk *HandoverKey) fingerprint() string {
	if hk == nil {
		return ""
	}
	sum := sha256.Sum256(hk.pub[:])
	return hex.EncodeToString(sum[:8])
}

// String returns "seal.HandoverKey(FINGERPRINT)"; never the private key.
func (hk *HandoverKey) String() string { return "seal.HandoverKey(" + hk.fingerprint() + ")" }

// Format implements fmt.Formatter: every verb prints String.
func (hk *HandoverKey) Format(f fmt.State, _ rune) { io.WriteString(f, hk.String()) }

// LogValue implements slog.LogValuer: only the public key's fingerprint.
func (hk *HandoverKey) LogValue() slog.Value {
	return slog.GroupValue(slog.String("public_key_sha256", hk.fingerprint()))
}
