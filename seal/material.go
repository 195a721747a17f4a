package seal

// Key material encoding: the plaintext that Keyring.SealKey seals. Frozen
// by testdata/formats-v1.json.
//
//	version 1:  [0x01][alg][32 secret][hasHMAC: 0x00 | 0x01][32 HMAC key, only if hasHMAC]
//
// The result is 35 bytes without and 67 bytes with an HMAC key. Decoding
// is strict: unknown version, unknown algorithm, a hasHMAC byte other
// than 0 or 1 and a wrong length are all ErrFormat.
const (
	materialV1       = 1
	materialLenNoMAC = 2 + keySize + 1
	materialLenMAC   = materialLenNoMAC + keySize
)

// appendBinary appends the encoded material to dst.
func (m *material) appendBinary(dst []byte) ([]byte, error) {
	if m.alg == 0 {
		return nil, ErrZeroed
	}
	dst = append(dst, materialV1, byte(m.alg))
	dst = append(dst, m.secret[:]...)
	if !m.hasHMAC {
		return append(dst, 0), nil
	}
	dst = append(dst, 1)
	return append(dst, m.hmacKey[:]...), nil
}

// parseMaterial decodes b into a new Key. b is not retained.
func parseMaterial(b []byte) (*Key, error) {
	if len(b) < materialLenNoMAC || b[0] != materialV1 {
		return nil, ErrFormat
	}
	alg := Algorithm(b[1])
	if !alg.valid() {
		return nil, ErrFormat
	}
	secret := b[2 : 2+keySize]
	switch hasMAC := b[2+keySize]; {
	case hasMAC == 0 && len(b) == materialLenNoMAC:
		return newKey(alg, secret, nil), nil
	case hasMAC == 1 && len(b) == materialLenMAC:
		return newKey(alg, secret, b[materialLenNoMAC:]), nil
	default:
		return nil, ErrFormat
	}
}
