package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"runtime"

	"golang.org/x/crypto/chacha20"
	"golang.org/x/crypto/chacha20poly1305"
)

// Sizes of the KES ciphertext format (spec/kes-api.md §6.2).
const (
	keySize   = 32
	ivSize    = 16
	nonceSize = 12
	tagSize   = 16
	// randSize is the per-message randomness: iv || nonce.
	randSize = ivSize + nonceSize
	// Overhead is what Encrypt adds to the plaintext: tag, iv and nonce.
	Overhead = tagSize + randSize
	// DEKSize is the size of a data key made by GenerateDEK.
	DEKSize = 32
)

// Key is unsealed master-key material: secret key, algorithm and optional
// HMAC key. Its methods are safe for concurrent use, except Zero.
//
// The material lives in a separate allocation that is wiped either by Zero
// or, at the latest, by the garbage collector once the Key is unreachable
// (a runtime cleanup). A Key therefore never has to be wiped "under" a
// request that still uses it. Key values must not be copied; pass *Key.
//
// Formatting a Key (fmt, slog) shows only its algorithm.
type Key struct {
	_ noCopy
	m *material
}

// noCopy makes go vet's copylocks check report copies of a Key: a copy
// would outlive the original's cleanup and see its material wiped.
type noCopy struct{}

func (*noCopy) Lock()   {}
func (*noCopy) Unlock() {}

// material is the secret part of a Key. It is never printed.
type material struct {
	alg     Algorithm
	hasHMAC bool
	secret  [keySize]byte
	hmacKey [keySize]byte
	// derive is HMAC-SHA256(secret, ·) with its pads absorbed (AES256
	// only): the per-message key derivation costs two block compressions
	// and no allocation.
	derive macState
	// mac is HMAC-SHA256(hmacKey, ·), precomputed the same way.
	mac macState
}

// NewKey returns a new key of the given algorithm with a random secret
// and a random HMAC key, both read from rand (crypto/rand if nil).
func NewKey(alg Algorithm, rand io.Reader) (*Key, error) {
	if !alg.valid() {
		return nil, ErrUnsupportedAlgorithm
	}
	var b [2 * keySize]byte
	defer clear(b[:])
	if _, err := io.ReadFull(randReader(rand), b[:]); err != nil {
		return nil, fmt.Errorf("seal: new key: %w", err)
	}
	return newKey(alg, b[:keySize], b[keySize:]), nil
}

// ImportKey returns a key with the given 32-byte secret and a new random
// HMAC key read from rand (crypto/rand if nil). The HMAC key is not
// derived from the secret (KES does the same since 2024).
func ImportKey(alg Algorithm, secret []byte, rand io.Reader) (*Key, error) {
	if !alg.valid() {
		return nil, ErrUnsupportedAlgorithm
	}
	if len(secret) != keySize {
		return nil, ErrInvalidKeySize
	}
	var h [keySize]byte
	defer clear(h[:])
	if _, err := io.ReadFull(randReader(rand), h[:]); err != nil {
		return nil, fmt.Errorf("seal: import key: %w", err)
	}
	return newKey(alg, secret, h[:]), nil
}

// ImportKeyWithHMAC returns a key with the given 32-byte secret and HMAC
// key, for migrating keys out of a KES keystore unchanged. A nil hmacKey
// makes a key without HMAC key (pre-2024 KES keys): its HMAC method
// returns ErrNoHMAC.
func ImportKeyWithHMAC(alg Algorithm, secret, hmacKey []byte) (*Key, error) {
	if !alg.valid() {
		return nil, ErrUnsupportedAlgorithm
	}
	if len(secret) != keySize || (hmacKey != nil && len(hmacKey) != keySize) {
		return nil, ErrInvalidKeySize
	}
	return newKey(alg, secret, hmacKey), nil
}

// newKey copies secret and hmacKey (nil: none) into a new Key. The
// arguments have been validated.
func newKey(alg Algorithm, secret, hmacKey []byte) *Key {
	m := &material{alg: alg}
	copy(m.secret[:], secret)
	if alg == AES256 {
		m.derive = newMACState(secret)
	}
	if hmacKey != nil {
		m.hasHMAC = true
		copy(m.hmacKey[:], hmacKey)
		m.mac = newMACState(hmacKey)
	}
	k := &Key{m: m}
	// m is not reachable from k's cleanup other than through the
	// argument, so k can be collected; m is wiped before it is freed.
	runtime.AddCleanup(k, materialCleanup, m)
	return k
}

// materialCleanup runs when a Key has become unreachable. A variable so a
// test can observe it.
var materialCleanup = (*material).zero

func randReader(r io.Reader) io.Reader {
	if r == nil {
		return rand.Reader
	}
	return r
}

// Algorithm returns the key's algorithm, or 0 after Zero.
func (k *Key) Algorithm() Algorithm {
	a := k.mat().alg
	runtime.KeepAlive(k)
	return a
}

// HasHMAC reports whether the key has an HMAC key.
func (k *Key) HasHMAC() bool {
	h := k.mat().hasHMAC
	runtime.KeepAlive(k)
	return h
}

// Encrypt encrypts plaintext in the KES format (spec/kes-api.md §6.2):
// Seal(nonce, plaintext, aad) || iv || nonce, with iv and nonce read from
// rand (crypto/rand if nil). The result is len(plaintext)+Overhead bytes.
func (k *Key) Encrypt(rand io.Reader, plaintext, aad []byte) ([]byte, error) {
	out := make([]byte, len(plaintext)+Overhead)
	if _, err := io.ReadFull(randReader(rand), out[len(plaintext)+tagSize:]); err != nil {
		return nil, fmt.Errorf("seal: encrypt: %w", err)
	}
	err := k.mat().seal(out, plaintext, aad)
	runtime.KeepAlive(k)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// GenerateDEK returns a new random 32-byte data key and its encryption
// under k with aad (the KES generate operation). Both are read from rand
// (crypto/rand if nil) and share one allocation.
func (k *Key) GenerateDEK(rand io.Reader, aad []byte) (plaintext, ciphertext []byte, err error) {
	// buf = ciphertext(DEKSize+tag) || iv || nonce || dek: the randomness
	// (iv, nonce, dek) is contiguous and read at once.
	const ctLen = DEKSize + Overhead
	buf := make([]byte, ctLen+DEKSize)
	if _, err := io.ReadFull(randReader(rand), buf[DEKSize+tagSize:]); err != nil {
		return nil, nil, fmt.Errorf("seal: generate: %w", err)
	}
	ciphertext, plaintext = buf[:ctLen:ctLen], buf[ctLen:]
	err = k.mat().seal(ciphertext, plaintext, aad)
	runtime.KeepAlive(k)
	if err != nil {
		clear(buf)
		return nil, nil, err
	}
	return plaintext, ciphertext, nil
}

// Decrypt reverses Encrypt. It also accepts the legacy JSON and
// MessagePack ciphertexts of older KES versions (spec/kes-api.md §6.3).
// The key is derived with k's algorithm whatever a legacy ciphertext
// names. Any failure is ErrDecrypt. The plaintext is never nil.
func (k *Key) Decrypt(ciphertext, aad []byte) ([]byte, error) {
	body, iv, nonce, ok := splitCiphertext(ciphertext)
	if !ok {
		return nil, ErrDecrypt
	}
	p, err := k.mat().open(body, iv, nonce, aad)
	runtime.KeepAlive(k)
	return p, err
}

// HMAC returns HMAC-SHA256(hmacKey, message), or ErrNoHMAC.
func (k *Key) HMAC(message []byte) ([]byte, error) {
	m := k.mat()
	var sum []byte
	var err error
	switch {
	case m.alg == 0:
		err = ErrZeroed
	case !m.hasHMAC:
		err = ErrNoHMAC
	default:
		sum = m.mac.sum(make([]byte, 0, 32), message)
	}
	runtime.KeepAlive(k)
	return sum, err
}

// Zero wipes the key material. Afterwards every method fails with
// ErrZeroed. Zero must not run concurrently with other methods of k; a
// Key shared through a Cache must not be zeroed by its users.
func (k *Key) Zero() {
	if k.m != nil {
		k.m.zero()
	}
	runtime.KeepAlive(k)
}

// mat returns k's material; a zero Key{} behaves like a zeroed key.
func (k *Key) mat() *material {
	if k.m == nil {
		return &noMaterial
	}
	return k.m
}

// noMaterial is the material of a zero Key{}. It is never written.
var noMaterial material

// String returns "seal.Key(ALG)"; it never shows key material.
func (k *Key) String() string {
	if k == nil {
		return "seal.Key(nil)"
	}
	a := k.Algorithm()
	if a == 0 {
		return "seal.Key(zeroed)"
	}
	return "seal.Key(" + a.String() + ")"
}

// Format implements fmt.Formatter so that every verb, including %#v and
// %x, prints String instead of the material.
func (k *Key) Format(f fmt.State, _ rune) { io.WriteString(f, k.String()) }

// LogValue implements slog.LogValuer: only the algorithm is logged.
func (k *Key) LogValue() slog.Value {
	if k == nil {
		return slog.StringValue("<nil>")
	}
	return slog.GroupValue(slog.String("algorithm", k.Algorithm().String()))
}

// Format keeps material unprintable even if it is reached some other way.
func (m *material) Format(f fmt.State, _ rune) { io.WriteString(f, "seal.material") }

func (m *material) zero() {
	m.alg = 0
	m.hasHMAC = false
	clear(m.secret[:])
	clear(m.hmacKey[:])
	m.derive.zero()
	m.mac.zero()
}

// seal fills out = Seal(nonce, plaintext, aad) || iv || nonce, where iv
// and nonce are already in out's last randSize bytes.
func (m *material) seal(out, plaintext, aad []byte) error {
	n := len(plaintext) + tagSize
	iv, nonce := out[n:n+ivSize], out[n+ivSize:]
	aead, err := m.aead(iv)
	if err != nil {
		return err
	}
	aead.Seal(out[:0], nonce, plaintext, aad)
	return nil
}

func (m *material) open(body, iv, nonce, aad []byte) ([]byte, error) {
	if len(body) < tagSize {
		return nil, ErrDecrypt
	}
	aead, err := m.aead(iv)
	if err != nil {
		return nil, err
	}
	p, err := aead.Open(make([]byte, 0, len(body)-tagSize), nonce, body, aad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return p, nil
}

// aead derives the per-message key from iv and returns the AEAD under it.
func (m *material) aead(iv []byte) (cipher.AEAD, error) {
	switch m.alg {
	case AES256:
		s := getScratch()
		defer putScratch(s)
		block, err := aes.NewCipher(m.derive.sumInto(s, iv))
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(block)
	case ChaCha20:
		k, err := chacha20.HChaCha20(m.secret[:], iv)
		if err != nil {
			return nil, err
		}
		defer clear(k)
		return chacha20poly1305.New(k)
	case 0:
		return nil, ErrZeroed
	default:
		return nil, ErrUnsupportedAlgorithm
	}
}
