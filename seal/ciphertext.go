package seal

import (
	"encoding/binary"
	"encoding/json"
)

// splitCiphertext returns the AEAD output (ciphertext || tag), iv and
// nonce of a KES ciphertext (spec/kes-api.md §6.3). A first byte of 0x95
// or '{' selects a legacy format; if it does not parse, the input is
// taken as the raw format, as KES does. ok is false if the input is too
// short to hold iv and nonce plus at least one byte.
func splitCiphertext(b []byte) (body, iv, nonce []byte, ok bool) {
	if len(b) > 0 {
		switch b[0] {
		case 0x95:
			if body, iv, nonce, ok = parseMsgpack(b); ok {
				return body, iv, nonce, true
			}
		case '{':
			if body, iv, nonce, ok = parseJSON(b); ok {
				return body, iv, nonce, true
			}
		}
	}
	if len(b) <= randSize {
		return nil, nil, nil, false
	}
	n := len(b) - randSize
	return b[:n], b[n : n+ivSize], b[n+ivSize:], true
}

// legacyJSON is the ciphertext of KES ≤ v0.19.
type legacyJSON struct {
	AEAD  string `json:"aead"`
	ID    string `json:"id"` // informational, ignored
	IV    []byte `json:"iv"`
	Nonce []byte `json:"nonce"`
	Bytes []byte `json:"bytes"`
}

func parseJSON(b []byte) (body, iv, nonce []byte, ok bool) {
	var c legacyJSON
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, nil, nil, false
	}
	switch c.AEAD {
	case "AES-256-GCM-HMAC-SHA-256", "ChaCha20Poly1305":
	default:
		return nil, nil, nil, false
	}
	if len(c.IV) != ivSize || len(c.Nonce) != nonceSize {
		return nil, nil, nil, false
	}
	return c.Bytes, c.IV, c.Nonce, true
}

// parseMsgpack parses the ciphertext of KES v0.20 to 2024: a MessagePack
// fixarray of five elements [str algorithm, str key id, bin iv, bin nonce,
// bin bytes] with nothing after it. Only the encodings a MessagePack
// writer produces for these types are accepted.
func parseMsgpack(b []byte) (body, iv, nonce []byte, ok bool) {
	r := msgpReader{b: b}
	if r.byte() != 0x95 {
		return nil, nil, nil, false
	}
	alg := r.str()
	r.str() // key id: informational, ignored
	iv, nonce, body = r.bin(), r.bin(), r.bin()
	if r.bad || len(r.b) != 0 {
		return nil, nil, nil, false
	}
	switch string(alg) {
	case "AES256-GCM_SHA256", "XCHACHA20-POLY1305":
	default:
		return nil, nil, nil, false
	}
	if len(iv) != ivSize || len(nonce) != nonceSize {
		return nil, nil, nil, false
	}
	return body, iv, nonce, true
}

// msgpReader reads the few MessagePack types of the legacy ciphertext.
// After the first error, bad is set and every read returns zero values.
type msgpReader struct {
	b   []byte
	bad bool
}

func (r *msgpReader) byte() byte {
	if r.bad || len(r.b) < 1 {
		r.bad = true
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// uint reads an n-byte big-endian length (n is 1, 2 or 4).
func (r *msgpReader) uint(n int) uint64 {
	if r.bad || len(r.b) < n {
		r.bad = true
		return 0
	}
	var v uint64
	switch n {
	case 1:
		v = uint64(r.b[0])
	case 2:
		v = uint64(binary.BigEndian.Uint16(r.b))
	case 4:
		v = uint64(binary.BigEndian.Uint32(r.b))
	}
	r.b = r.b[n:]
	return v
}

func (r *msgpReader) take(n uint64) []byte {
	if r.bad || uint64(len(r.b)) < n {
		r.bad = true
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// str reads a fixstr, str8 or str16.
func (r *msgpReader) str() []byte {
	switch c := r.byte(); {
	case c&0xe0 == 0xa0:
		return r.take(uint64(c & 0x1f))
	case c == 0xd9:
		return r.take(r.uint(1))
	case c == 0xda:
		return r.take(r.uint(2))
	default:
		r.bad = true
		return nil
	}
}

// bin reads a bin8, bin16 or bin32.
func (r *msgpReader) bin() []byte {
	switch r.byte() {
	case 0xc4:
		return r.take(r.uint(1))
	case 0xc5:
		return r.take(r.uint(2))
	case 0xc6:
		return r.take(r.uint(4))
	default:
		r.bad = true
		return nil
	}
}
