package seal

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
)

// Sealer wraps small secrets (the REK) under a root of trust. *hsm.Module
// satisfies it structurally; Software is an in-process implementation for
// dev and tests.
//
// Unwrap must fail if ciphertext or aad were altered. KeyID identifies the
// wrapping key and must be stable: it is recorded in the Stanza and bound
// into the AAD.
type Sealer interface {
	KeyID() string
	Mechanism() string
	Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error)
	Unwrap(ctx context.Context, ciphertext, aad []byte) ([]byte, error)
}

// Stanza is one sealer key's wrapping of the cluster REK. Nothing in it is
// secret: Wrapped is only useful to the sealer that made it.
type Stanza struct {
	KeyID     string // Sealer.KeyID of the wrapping key
	Mechanism string // Sealer.Mechanism, informational
	REKID     string // Keyring.ID of the wrapped REK
	Wrapped   []byte // Sealer.Wrap(REK, AAD = u32 len || "kmsd/rek/v1" || u32 len || KeyID)
}

// Stanza encoding, version 1 (frozen by testdata/formats-v1.json):
//
//	[0x01] then KeyID, Mechanism, REKID, Wrapped, each as
//	[u16 big-endian length][bytes]
//
// Nothing may follow. Fields longer than 65535 bytes cannot be encoded.
const stanzaV1 = 1

// MarshalBinary encodes s in the version-1 stanza format.
func (s Stanza) MarshalBinary() ([]byte, error) {
	fields := [...][]byte{[]byte(s.KeyID), []byte(s.Mechanism), []byte(s.REKID), s.Wrapped}
	n := 1
	for _, f := range fields {
		if len(f) > math.MaxUint16 {
			return nil, fmt.Errorf("%w: stanza field of %d bytes", ErrFormat, len(f))
		}
		n += 2 + len(f)
	}
	b := make([]byte, 1, n)
	b[0] = stanzaV1
	for _, f := range fields {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b, nil
}

// UnmarshalBinary decodes a version-1 stanza. It returns an error wrapping
// ErrFormat for any other version, a truncated field or trailing bytes.
// s is unchanged on error.
func (s *Stanza) UnmarshalBinary(b []byte) error {
	if len(b) < 1 || b[0] != stanzaV1 {
		return fmt.Errorf("%w: unknown stanza version", ErrFormat)
	}
	b = b[1:]
	var fields [4][]byte
	for i := range fields {
		if len(b) < 2 {
			return fmt.Errorf("%w: truncated stanza", ErrFormat)
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n {
			return fmt.Errorf("%w: truncated stanza", ErrFormat)
		}
		fields[i], b = b[2:2+n], b[2+n:]
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: %d bytes after stanza", ErrFormat, len(b))
	}
	*s = Stanza{
		KeyID:     string(fields[0]),
		Mechanism: string(fields[1]),
		REKID:     string(fields[2]),
		Wrapped:   append([]byte(nil), fields[3]...),
	}
	return nil
}
