package seal

// CONTRACT FILE written by the lead so that other packages can compile
// against seal while it is being built. The seal implementer replaces the
// bodies (and may move declarations into other files) but must keep every
// exported name and signature below.

import (
	"context"
	"errors"
	"io"
	"time"
)

// Algorithm of a master key. Numbers are frozen (they are stored).
type Algorithm uint8

const (
	AES256   Algorithm = 1
	ChaCha20 Algorithm = 2
)

// String returns "AES256" or "ChaCha20" (the KES names).
func (a Algorithm) String() string { panic("todo") }

// ParseAlgorithm accepts "AES256", "AES256-GCM_SHA256", "ChaCha20",
// "XCHACHA20-POLY1305" and returns ErrUnsupportedAlgorithm otherwise.
func ParseAlgorithm(s string) (Algorithm, error) { panic("todo") }

// Errors. Compare with errors.Is.
var (
	ErrDecrypt              = errors.New("seal: ciphertext is not authentic")
	ErrNoHMAC               = errors.New("seal: key has no HMAC key")
	ErrSealed               = errors.New("seal: sealed")
	ErrInvalidKeySize       = errors.New("seal: invalid key size")
	ErrUnsupportedAlgorithm = errors.New("seal: unsupported algorithm")
)

// Sealer wraps small secrets (the REK) under a root of trust. *hsm.Module
// satisfies it structurally; Software is an in-process implementation for
// dev and tests.
type Sealer interface {
	KeyID() string
	Mechanism() string
	Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error)
	Unwrap(ctx context.Context, ciphertext, aad []byte) ([]byte, error)
}

// Stanza is one HSM key's wrapping of the cluster REK.
type Stanza struct {
	KeyID     string
	Mechanism string
	REKID     string
	Wrapped   []byte
}

func (s Stanza) MarshalBinary() ([]byte, error)  { panic("todo") }
func (s *Stanza) UnmarshalBinary(b []byte) error { panic("todo") }

// Keyring holds the unsealed REK. Safe for concurrent use.
type Keyring struct{}

// Init creates a new random REK and wraps it with s.
func Init(ctx context.Context, s Sealer) (*Keyring, Stanza, error) { panic("todo") }

// Unseal unwraps st with s and verifies the REK against st.REKID.
func Unseal(ctx context.Context, s Sealer, st Stanza) (*Keyring, error) { panic("todo") }

// Stanza wraps this keyring's REK under another sealer (node join, re-wrap).
func (kr *Keyring) Stanza(ctx context.Context, s Sealer) (Stanza, error) { panic("todo") }

// ID is the REK's public fingerprint.
func (kr *Keyring) ID() string { panic("todo") }

// SealKey seals k's material under the REK; AAD binds name and version.
func (kr *Keyring) SealKey(name string, version uint32, k *Key) ([]byte, error) { panic("todo") }

// OpenKey reverses SealKey; ErrDecrypt if not authentic.
func (kr *Keyring) OpenKey(name string, version uint32, sealed []byte) (*Key, error) { panic("todo") }

// Destroy zeroes the REK.
func (kr *Keyring) Destroy() { panic("todo") }

// Key is unsealed master-key material: secret key, algorithm, HMAC key.
type Key struct{}

func NewKey(alg Algorithm, rand io.Reader) (*Key, error)                   { panic("todo") }
func ImportKey(alg Algorithm, secret []byte, rand io.Reader) (*Key, error) { panic("todo") }
func (k *Key) Algorithm() Algorithm                                        { panic("todo") }
func (k *Key) Encrypt(rand io.Reader, plaintext, aad []byte) ([]byte, error) {
	panic("todo")
}
func (k *Key) Decrypt(ciphertext, aad []byte) ([]byte, error) { panic("todo") }
func (k *Key) GenerateDEK(rand io.Reader, aad []byte) (plaintext, ciphertext []byte, err error) {
	panic("todo")
}
func (k *Key) HMAC(message []byte) ([]byte, error) { panic("todo") }
func (k *Key) Zero()                               { panic("todo") }

// CacheConfig configures the hot cache (KES cache.expiry semantics).
type CacheConfig struct {
	Any        time.Duration // evict everything this often; 0 = 5m
	Unused     time.Duration // evict entries unused for this long; 0 = 30s
	MaxEntries int           // bound; 0 = 100000
}

// Cache holds unsealed keys by name. Safe for concurrent use.
type Cache struct{}

func NewCache(cfg CacheConfig) *Cache { panic("todo") }

// Get returns the cached key or calls load once for concurrent misses.
func (c *Cache) Get(ctx context.Context, name string, load func(ctx context.Context) (*Key, error)) (*Key, error) {
	panic("todo")
}
func (c *Cache) Invalidate(name string) { panic("todo") }
func (c *Cache) Purge()                 { panic("todo") }
func (c *Cache) Close()                 { panic("todo") }
