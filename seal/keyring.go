package seal

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
)

const (
	rekSize   = 32
	rekIDSize = 16 // bytes of the REK fingerprint; REKID is its hex

	// Domain-separation labels. Changing any of them changes a format.
	rekWrapLabel = "kmsd/rek/v1"         // AAD of the REK under a Sealer
	rekIDLabel   = "kmsd rek id v1"      // HMAC message of the REK fingerprint
	sealingLabel = "kmsd key sealing v1" // HKDF info of the key-sealing subkey
	keyAADLabel  = "kmsd/key/v1"         // AAD of sealed key material

	// Sealed key blob, version 1 (see DESIGN.md):
	//	[0x01][16 REK fingerprint][12 nonce][AES-256-GCM(material) || 16 tag]
	blobV1         = 1
	blobHeaderSize = 1 + rekIDSize
	blobNonceSize  = 12
	blobOverhead   = blobHeaderSize + blobNonceSize + tagSize
)

// Keyring holds the unsealed cluster root encryption key (REK) and seals
// and opens master-key material under it. Safe for concurrent use. A nil
// or destroyed Keyring returns ErrSealed.
//
// The REK is only ever held here, in memory; it leaves the process only
// wrapped by a Sealer (Init, Stanza).
type Keyring struct {
	id    string          // hex(fp): the public REK fingerprint
	fp    [rekIDSize]byte // HMAC-SHA256(REK, rekIDLabel)[:16]
	mu    sync.RWMutex    // guards the two pointers below against Destroy
	rek   *[rekSize]byte  // nil after Destroy
	subKS *[32]byte       // key-sealing subkey: HKDF-SHA256(REK, info=sealingLabel)
}

// Init creates a new random REK from crypto/rand, wraps it with s and
// checks that s can unwrap it again. The returned Stanza is what must be
// stored (node-locally and in the replicated state) to unseal later.
func Init(ctx context.Context, s Sealer) (*Keyring, Stanza, error) {
	var rek [rekSize]byte
	defer clear(rek[:])
	if _, err := io.ReadFull(rand.Reader, rek[:]); err != nil {
		return nil, Stanza{}, fmt.Errorf("seal: init: %w", err)
	}
	kr, err := newKeyring(rek[:])
	if err != nil {
		return nil, Stanza{}, err
	}
	st, err := kr.Stanza(ctx, s)
	if err != nil {
		kr.Destroy()
		return nil, Stanza{}, err
	}
	return kr, st, nil
}

// Unseal unwraps st with s and verifies the REK against st.REKID. It
// returns ErrStanzaMismatch if st was made for another sealer key and
// ErrREKMismatch if the unwrapped REK is not the one st names.
func Unseal(ctx context.Context, s Sealer, st Stanza) (*Keyring, error) {
	if st.KeyID != s.KeyID() {
		return nil, fmt.Errorf("%w: stanza %q, sealer %q", ErrStanzaMismatch, st.KeyID, s.KeyID())
	}
	rek, err := s.Unwrap(ctx, st.Wrapped, rekAAD(s.KeyID()))
	if err != nil {
		return nil, fmt.Errorf("seal: unseal with %q: %w", s.KeyID(), err)
	}
	defer clear(rek)
	kr, err := newKeyring(rek)
	if err != nil {
		return nil, err
	}
	if kr.id != st.REKID {
		kr.Destroy()
		return nil, fmt.Errorf("%w: stanza names %q, unwrapped REK is %q", ErrREKMismatch, st.REKID, kr.id)
	}
	return kr, nil
}

// newKeyring copies rek into a new Keyring.
func newKeyring(rek []byte) (*Keyring, error) {
	if len(rek) != rekSize {
		return nil, fmt.Errorf("seal: REK: %w", ErrInvalidKeySize)
	}
	kr := &Keyring{rek: new([rekSize]byte), subKS: new([32]byte)}
	copy(kr.rek[:], rek)
	mac := hmac.New(sha256.New, rek)
	mac.Write([]byte(rekIDLabel))
	copy(kr.fp[:], mac.Sum(nil))
	kr.id = hex.EncodeToString(kr.fp[:])
	sub, err := hkdf.Key(sha256.New, rek, nil, sealingLabel, len(kr.subKS))
	if err != nil {
		return nil, fmt.Errorf("seal: derive sealing key: %w", err)
	}
	copy(kr.subKS[:], sub)
	clear(sub)
	return kr, nil
}

// Stanza wraps this keyring's REK under another sealer (node join,
// re-wrap) and checks that the sealer can unwrap it again.
func (kr *Keyring) Stanza(ctx context.Context, s Sealer) (Stanza, error) {
	var rek [rekSize]byte
	defer clear(rek[:])
	if err := kr.copyREK(&rek); err != nil {
		return Stanza{}, err
	}
	id := s.KeyID()
	aad := rekAAD(id)
	wrapped, err := s.Wrap(ctx, rek[:], aad)
	if err != nil {
		return Stanza{}, fmt.Errorf("seal: wrap REK with %q: %w", id, err)
	}
	back, err := s.Unwrap(ctx, wrapped, aad)
	if err != nil {
		return Stanza{}, fmt.Errorf("seal: verify wrapped REK with %q: %w", id, err)
	}
	ok := subtle.ConstantTimeCompare(back, rek[:]) == 1
	clear(back)
	if !ok {
		return Stanza{}, fmt.Errorf("seal: sealer %q unwrapped another REK than it wrapped", id)
	}
	return Stanza{KeyID: id, Mechanism: s.Mechanism(), REKID: kr.id, Wrapped: wrapped}, nil
}

func (kr *Keyring) copyREK(dst *[rekSize]byte) error {
	if kr == nil {
		return ErrSealed
	}
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	if kr.rek == nil {
		return ErrSealed
	}
	*dst = *kr.rek
	return nil
}

// ID is the REK's public fingerprint: 32 lowercase hex characters of
// HMAC-SHA256(REK, "kmsd rek id v1")[:16]. It reveals nothing about the
// REK. ID keeps working after Destroy; it is "" for a nil Keyring.
func (kr *Keyring) ID() string {
	if kr == nil {
		return ""
	}
	return kr.id
}

// SealKey seals k's material under the REK; the AAD binds name, version
// and the blob header. The blob is len(material)+46 bytes (112 for a key
// with an HMAC key).
func (kr *Keyring) SealKey(name string, version uint32, k *Key) ([]byte, error) {
	return kr.sealKey(name, version, k, rand.Reader)
}

// sealKey is SealKey with the nonce read from r (golden tests).
func (kr *Keyring) sealKey(name string, version uint32, k *Key, r io.Reader) ([]byte, error) {
	if k == nil {
		return nil, fmt.Errorf("seal: seal key %q: nil key", name)
	}
	var buf [materialLenMAC]byte
	defer clear(buf[:])
	pt, err := k.mat().appendBinary(buf[:0])
	runtime.KeepAlive(k)
	if err != nil {
		return nil, err
	}
	aead, unlock, err := kr.aead()
	if err != nil {
		return nil, err
	}
	defer unlock()
	out := make([]byte, blobHeaderSize+blobNonceSize, len(pt)+blobOverhead)
	out[0] = blobV1
	copy(out[1:], kr.fp[:])
	nonce := out[blobHeaderSize:]
	if _, err := io.ReadFull(r, nonce); err != nil {
		return nil, fmt.Errorf("seal: seal key %q: %w", name, err)
	}
	return aead.Seal(out, nonce, pt, keyAAD(out[:blobHeaderSize], name, version)), nil
}

// OpenKey reverses SealKey. It returns ErrDecrypt if sealed is not
// authentic for this REK, name and version, and ErrSealed if kr is.
func (kr *Keyring) OpenKey(name string, version uint32, sealed []byte) (*Key, error) {
	if len(sealed) < blobOverhead || sealed[0] != blobV1 {
		return nil, ErrDecrypt
	}
	header, nonce, body := sealed[:blobHeaderSize], sealed[blobHeaderSize:blobHeaderSize+blobNonceSize], sealed[blobHeaderSize+blobNonceSize:]
	aead, unlock, err := kr.aead()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if !bytes.Equal(header[1:], kr.fp[:]) {
		return nil, fmt.Errorf("%w: sealed under REK %x, not %s", ErrDecrypt, header[1:], kr.id)
	}
	pt, err := aead.Open(nil, nonce, body, keyAAD(header, name, version))
	if err != nil {
		return nil, ErrDecrypt
	}
	defer clear(pt)
	k, err := parseMaterial(pt)
	if err != nil {
		return nil, fmt.Errorf("seal: open key %q: %w", name, err)
	}
	return k, nil
}

// aead returns AES-256-GCM under the key-sealing subkey with kr's read
// lock held; the caller must call unlock when done.
func (kr *Keyring) aead() (cipher.AEAD, func(), error) {
	if kr == nil {
		return nil, nil, ErrSealed
	}
	kr.mu.RLock()
	if kr.subKS == nil {
		kr.mu.RUnlock()
		return nil, nil, ErrSealed
	}
	block, err := aes.NewCipher(kr.subKS[:])
	if err != nil {
		kr.mu.RUnlock()
		return nil, nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		kr.mu.RUnlock()
		return nil, nil, err
	}
	return aead, kr.mu.RUnlock, nil
}

// Destroy zeroes the REK and the key derived from it. Afterwards every
// method except ID returns ErrSealed. Keys already opened are unaffected.
func (kr *Keyring) Destroy() {
	if kr == nil {
		return
	}
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if kr.rek != nil {
		clear(kr.rek[:])
		clear(kr.subKS[:])
		kr.rek, kr.subKS = nil, nil
	}
}

// String returns "seal.Keyring(REKID)".
func (kr *Keyring) String() string { return "seal.Keyring(" + kr.ID() + ")" }

// Format implements fmt.Formatter: every verb prints String.
func (kr *Keyring) Format(f fmt.State, _ rune) { io.WriteString(f, kr.String()) }

// LogValue implements slog.LogValuer: only the REK fingerprint is logged.
func (kr *Keyring) LogValue() slog.Value {
	return slog.GroupValue(slog.String("rek_id", kr.ID()))
}

// rekAAD binds a wrapped REK to its purpose and the wrapping key's id.
func rekAAD(keyID string) []byte {
	b := appendLP(nil, rekWrapLabel)
	return appendLP(b, keyID)
}

// keyAAD binds sealed material to the blob header, its purpose, the key
// name and the key version:
//
//	header || u32(len(label)) || label || u32(len(name)) || name || u32(version)
func keyAAD(header []byte, name string, version uint32) []byte {
	b := make([]byte, 0, len(header)+4+len(keyAADLabel)+4+len(name)+4)
	b = append(b, header...)
	b = appendLP(b, keyAADLabel)
	b = appendLP(b, name)
	return binary.BigEndian.AppendUint32(b, version)
}

// appendLP appends s with a 4-byte big-endian length prefix.
func appendLP(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}
