package seal

import (
	"errors"
	"strconv"
)

// Algorithm of a master key. Numbers are frozen: they are stored in the
// replicated state and inside sealed key material.
type Algorithm uint8

const (
	AES256   Algorithm = 1 // HMAC-SHA256 key derivation + AES-256-GCM
	ChaCha20 Algorithm = 2 // HChaCha20 key derivation + ChaCha20-Poly1305
)

// String returns "AES256" or "ChaCha20" (the KES names). An unknown
// value is printed as "Algorithm(n)".
func (a Algorithm) String() string {
	switch a {
	case AES256:
		return "AES256"
	case ChaCha20:
		return "ChaCha20"
	default:
		return "Algorithm(" + strconv.Itoa(int(a)) + ")"
	}
}

// valid reports whether a is one of the defined algorithms.
func (a Algorithm) valid() bool { return a == AES256 || a == ChaCha20 }

// ParseAlgorithm accepts "AES256", "AES256-GCM_SHA256", "ChaCha20",
// "XCHACHA20-POLY1305" and returns ErrUnsupportedAlgorithm otherwise
// (including for ""). Matching is exact, as in KES.
func ParseAlgorithm(s string) (Algorithm, error) {
	switch s {
	case "AES256", "AES256-GCM_SHA256":
		return AES256, nil
	case "ChaCha20", "XCHACHA20-POLY1305":
		return ChaCha20, nil
	default:
		return 0, ErrUnsupportedAlgorithm
	}
}

// Errors. Compare with errors.Is.
var (
	// ErrDecrypt means a ciphertext or sealed blob is not authentic: wrong
	// key, wrong associated data, tampered or malformed. It is the
	// caller's mistake (KES answers 400), never an infrastructure failure.
	ErrDecrypt = errors.New("seal: ciphertext is not authentic")
	// ErrNoHMAC is returned by Key.HMAC for keys without an HMAC key
	// (keys migrated from KES versions before 2024).
	ErrNoHMAC = errors.New("seal: key has no HMAC key")
	// ErrSealed is returned by a nil or destroyed Keyring.
	ErrSealed = errors.New("seal: sealed")
	// ErrInvalidKeySize is returned for key material that is not 32 bytes.
	ErrInvalidKeySize = errors.New("seal: invalid key size")
	// ErrUnsupportedAlgorithm is returned for unknown algorithm names or
	// numbers.
	ErrUnsupportedAlgorithm = errors.New("seal: unsupported algorithm")

	// ErrZeroed is returned by the methods of a Key after Zero.
	ErrZeroed = errors.New("seal: key material was zeroed")
	// ErrREKMismatch is returned by Unseal when the unwrapped REK does not
	// match the stanza's REKID: the stanza belongs to another cluster or
	// was altered. A node must not serve with such a REK.
	ErrREKMismatch = errors.New("seal: REK does not match its stanza")
	// ErrStanzaMismatch is returned by Unseal when the stanza was made for
	// another sealer key (its KeyID differs from Sealer.KeyID). It is the
	// normal "not mine" outcome when trying several stanzas; any other
	// error from Unseal is fatal.
	ErrStanzaMismatch = errors.New("seal: stanza is for another sealer key")
	// ErrFormat is returned when a stored encoding (stanza, key material)
	// is malformed or has an unknown version.
	ErrFormat = errors.New("seal: malformed encoding")
)
