package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"strings"
	"testing"

	"golang.org/x/crypto/chacha20"
	"golang.org/x/crypto/chacha20poly1305"
)

// ---- an independent reference of spec/kes-api.md §6.2, built from the
// standard constructions (crypto/hmac, no precomputed state) ----

func refAEAD(alg Algorithm, secret, iv []byte) cipher.AEAD {
	switch alg {
	case AES256:
		mac := hmac.New(sha256.New, secret)
		mac.Write(iv)
		block, err := aes.NewCipher(mac.Sum(nil))
		if err != nil {
			panic(err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			panic(err)
		}
		return aead
	case ChaCha20:
		k, err := chacha20.HChaCha20(secret, iv)
		if err != nil {
			panic(err)
		}
		aead, err := chacha20poly1305.New(k)
		if err != nil {
			panic(err)
		}
		return aead
	}
	panic("bad algorithm")
}

// refSeal returns the AEAD output (ciphertext || tag) for iv and nonce.
func refSeal(alg Algorithm, secret, iv, nonce, plaintext, aad []byte) []byte {
	return refAEAD(alg, secret, iv).Seal(nil, nonce, plaintext, aad)
}

func refEncrypt(alg Algorithm, secret, iv, nonce, plaintext, aad []byte) []byte {
	out := refSeal(alg, secret, iv, nonce, plaintext, aad)
	out = append(out, iv...)
	return append(out, nonce...)
}

func refDecrypt(alg Algorithm, secret, ct, aad []byte) ([]byte, error) {
	if len(ct) <= 28 {
		return nil, errors.New("short")
	}
	n := len(ct) - 28
	return refAEAD(alg, secret, ct[n:n+16]).Open(nil, ct[n+16:], ct[:n], aad)
}

// ---- helpers ----

func testRand(seed uint64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return mrand.NewChaCha8(s)
}

func readN(r io.Reader, n int) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		panic(err)
	}
	return b
}

func mustKey(t testing.TB, alg Algorithm, secret []byte) *Key {
	t.Helper()
	k, err := ImportKey(alg, secret, testRand(99))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var algs = []Algorithm{AES256, ChaCha20}

// ---- tests ----

func TestAlgorithm(t *testing.T) {
	tests := []struct {
		in   string
		want Algorithm
		err  error
	}{
		{"AES256", AES256, nil},
		{"AES256-GCM_SHA256", AES256, nil},
		{"ChaCha20", ChaCha20, nil},
		{"XCHACHA20-POLY1305", ChaCha20, nil},
		{"", 0, ErrUnsupportedAlgorithm},
		{"aes256", 0, ErrUnsupportedAlgorithm},
		{"AES-256-GCM-HMAC-SHA-256", 0, ErrUnsupportedAlgorithm},
		{"CHACHA20", 0, ErrUnsupportedAlgorithm},
	}
	for _, tt := range tests {
		got, err := ParseAlgorithm(tt.in)
		if got != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("ParseAlgorithm(%q) = %v, %v; want %v, %v", tt.in, got, err, tt.want, tt.err)
		}
	}
	for a, s := range map[Algorithm]string{AES256: "AES256", ChaCha20: "ChaCha20", 0: "Algorithm(0)", 7: "Algorithm(7)"} {
		if a.String() != s {
			t.Errorf("%d.String() = %q, want %q", uint8(a), a.String(), s)
		}
	}
	if AES256 != 1 || ChaCha20 != 2 {
		t.Fatal("algorithm numbers are frozen")
	}
}

func TestNewAndImportKey(t *testing.T) {
	if _, err := NewKey(0, nil); !errors.Is(err, ErrUnsupportedAlgorithm) {
		t.Errorf("NewKey(0): %v", err)
	}
	if _, err := NewKey(3, nil); !errors.Is(err, ErrUnsupportedAlgorithm) {
		t.Errorf("NewKey(3): %v", err)
	}
	if _, err := NewKey(AES256, strings.NewReader("short")); err == nil {
		t.Error("NewKey with a failing reader succeeded")
	}
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := ImportKey(AES256, make([]byte, n), nil); !errors.Is(err, ErrInvalidKeySize) {
			t.Errorf("ImportKey(%d bytes): %v", n, err)
		}
	}
	if _, err := ImportKey(9, make([]byte, 32), nil); !errors.Is(err, ErrUnsupportedAlgorithm) {
		t.Errorf("ImportKey(alg 9): %v", err)
	}
	if _, err := ImportKeyWithHMAC(AES256, make([]byte, 32), make([]byte, 16)); !errors.Is(err, ErrInvalidKeySize) {
		t.Errorf("ImportKeyWithHMAC(short hmac): %v", err)
	}

	// NewKey draws secret and HMAC key; ImportKey draws an HMAC key that is
	// not derived from the secret (two imports of one secret differ).
	secret := bytes.Repeat([]byte{7}, 32)
	a, _ := ImportKey(AES256, secret, nil)
	b, _ := ImportKey(AES256, secret, nil)
	ma, _ := a.HMAC([]byte("m"))
	mb, _ := b.HMAC([]byte("m"))
	if bytes.Equal(ma, mb) {
		t.Error("imported keys share an HMAC key")
	}
	if !a.HasHMAC() || a.Algorithm() != AES256 {
		t.Error("imported key: wrong HasHMAC or Algorithm")
	}
	// The secret was copied.
	secret[0] = 8
	ct, _ := a.Encrypt(nil, []byte("x"), nil)
	if p, err := refDecrypt(AES256, bytes.Repeat([]byte{7}, 32), ct, nil); err != nil || string(p) != "x" {
		t.Errorf("ImportKey did not copy the secret: %v", err)
	}
}

func TestRoundTrip(t *testing.T) {
	plaintexts := [][]byte{nil, {}, []byte("x"), bytes.Repeat([]byte("0123456789abcdef"), 1000)}
	aads := [][]byte{nil, {}, []byte("context"), make([]byte, 32)}
	for _, alg := range algs {
		k, err := NewKey(alg, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, pt := range plaintexts {
			for _, aad := range aads {
				t.Run(fmt.Sprintf("%v/pt%d/aad%d", alg, len(pt), len(aad)), func(t *testing.T) {
					ct, err := k.Encrypt(nil, pt, aad)
					if err != nil {
						t.Fatal(err)
					}
					if len(ct) != len(pt)+Overhead {
						t.Fatalf("len %d, want %d", len(ct), len(pt)+Overhead)
					}
					got, err := k.Decrypt(ct, aad)
					if err != nil {
						t.Fatal(err)
					}
					if got == nil || !bytes.Equal(got, pt) {
						t.Fatalf("got %x (nil: %v), want %x", got, got == nil, pt)
					}
				})
			}
		}
	}
}

// TestEmptyAADEquivalence: an absent and an empty context are the same.
func TestEmptyAADEquivalence(t *testing.T) {
	for _, alg := range algs {
		k, _ := NewKey(alg, nil)
		ct, _ := k.Encrypt(nil, []byte("p"), nil)
		if _, err := k.Decrypt(ct, []byte{}); err != nil {
			t.Errorf("%v: %v", alg, err)
		}
	}
}

func TestEncryptMatchesReference(t *testing.T) {
	for _, alg := range algs {
		secret := readN(testRand(1), 32)
		k := mustKey(t, alg, secret)
		for i, pt := range [][]byte{nil, []byte("hello"), readN(testRand(2), 1000)} {
			aad := []byte(fmt.Sprint("aad", i))
			ct, err := k.Encrypt(testRand(uint64(i)), pt, aad)
			if err != nil {
				t.Fatal(err)
			}
			// Same randomness in the same order: iv then nonce.
			rnd := readN(testRand(uint64(i)), 28)
			want := refEncrypt(alg, secret, rnd[:16], rnd[16:], pt, aad)
			if !bytes.Equal(ct, want) {
				t.Fatalf("%v #%d: ciphertext differs from the reference", alg, i)
			}
			if p, err := refDecrypt(alg, secret, ct, aad); err != nil || !bytes.Equal(p, pt) {
				t.Fatalf("%v #%d: reference cannot decrypt: %v", alg, i, err)
			}
		}
	}
}

func TestEmptyPlaintext(t *testing.T) {
	for _, alg := range algs {
		k, _ := NewKey(alg, nil)
		ct, err := k.Encrypt(nil, nil, nil)
		if err != nil || len(ct) != 44 {
			t.Fatalf("%v: len %d, %v; want 44", alg, len(ct), err)
		}
		p, err := k.Decrypt(ct, nil)
		if err != nil || p == nil || len(p) != 0 {
			t.Fatalf("%v: %v, %v", alg, p, err)
		}
	}
}

func TestNonDeterministic(t *testing.T) {
	for _, alg := range algs {
		k, _ := NewKey(alg, nil)
		a, _ := k.Encrypt(nil, []byte("same"), nil)
		b, _ := k.Encrypt(nil, []byte("same"), nil)
		if bytes.Equal(a, b) || bytes.Equal(a[len(a)-28:], b[len(b)-28:]) {
			t.Errorf("%v: two encryptions are equal", alg)
		}
		d1, c1, _ := k.GenerateDEK(nil, nil)
		d2, c2, _ := k.GenerateDEK(nil, nil)
		if bytes.Equal(d1, d2) || bytes.Equal(c1, c2) {
			t.Errorf("%v: two DEKs are equal", alg)
		}
	}
}

func TestGenerateDEK(t *testing.T) {
	for _, alg := range algs {
		secret := readN(testRand(5), 32)
		k := mustKey(t, alg, secret)
		aad := []byte("bucket/object")
		dek, ct, err := k.GenerateDEK(testRand(6), aad)
		if err != nil {
			t.Fatal(err)
		}
		if len(dek) != 32 || len(ct) != 76 || cap(dek) != 32 || cap(ct) != 76 {
			t.Fatalf("%v: len/cap dek %d/%d ct %d/%d", alg, len(dek), cap(dek), len(ct), cap(ct))
		}
		p, err := k.Decrypt(ct, aad)
		if err != nil || !bytes.Equal(p, dek) {
			t.Fatalf("%v: Decrypt: %v", alg, err)
		}
		if p, err := refDecrypt(alg, secret, ct, aad); err != nil || !bytes.Equal(p, dek) {
			t.Fatalf("%v: reference: %v", alg, err)
		}
		// Appending to either result must not clobber the other.
		_ = append(dek, 1, 2, 3)
		if p, err := k.Decrypt(ct, aad); err != nil || !bytes.Equal(p, dek) {
			t.Fatalf("%v: ciphertext changed by appending to the DEK", alg)
		}
		if _, _, err := k.GenerateDEK(strings.NewReader("short"), nil); err == nil {
			t.Fatalf("%v: GenerateDEK with a failing reader succeeded", alg)
		}
	}
}

func TestDecryptFailures(t *testing.T) {
	for _, alg := range algs {
		k, _ := NewKey(alg, nil)
		other, _ := NewKey(alg, nil)
		aad := []byte("ctx")
		ct, _ := k.Encrypt(nil, []byte("plaintext"), aad)
		flip := func(i int) []byte {
			c := bytes.Clone(ct)
			c[i] ^= 1
			return c
		}
		tests := []struct {
			name string
			key  *Key
			ct   []byte
			aad  []byte
		}{
			{"wrong aad", k, ct, []byte("ctx2")},
			{"missing aad", k, ct, nil},
			{"other key", other, ct, aad},
			{"tampered ciphertext", k, flip(0), aad},
			{"tampered tag", k, flip(len(ct) - 29), aad},
			{"tampered iv", k, flip(len(ct) - 20), aad},
			{"tampered nonce", k, flip(len(ct) - 1), aad},
			{"truncated", k, ct[:len(ct)-1], aad},
			{"extended", k, append(bytes.Clone(ct), 0), aad},
			{"empty", k, nil, nil},
			{"28 bytes", k, make([]byte, 28), nil},
			{"29 bytes", k, make([]byte, 29), nil},
			{"43 bytes", k, make([]byte, 43), nil},
			{"44 zero bytes", k, make([]byte, 44), nil},
		}
		for _, tt := range tests {
			if p, err := tt.key.Decrypt(tt.ct, tt.aad); !errors.Is(err, ErrDecrypt) || p != nil {
				t.Errorf("%v %s: %x, %v; want ErrDecrypt", alg, tt.name, p, err)
			}
		}
	}
}

// makeLegacyJSON builds a KES ≤ v0.19 ciphertext from its fields.
func makeLegacyJSON(aead string, iv, nonce, sealed []byte) []byte {
	b, err := json.Marshal(map[string]any{"aead": aead, "id": "some-id", "iv": iv, "nonce": nonce, "bytes": sealed})
	if err != nil {
		panic(err)
	}
	return b
}

// msgp encodes the legacy MessagePack ciphertext with chosen type bytes.
type msgp struct {
	alg, id          string
	iv, nonce, bytes []byte
	strType, binType byte // 0: smallest encoding
}

func (m msgp) encode() []byte {
	b := []byte{0x95}
	str := func(s string) {
		switch {
		case m.strType == 0xda:
			b = append(b, 0xda)
			b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		case m.strType == 0xd9 || len(s) > 31:
			b = append(b, 0xd9, byte(len(s)))
		default:
			b = append(b, 0xa0|byte(len(s)))
		}
		b = append(b, s...)
	}
	bin := func(p []byte) {
		switch m.binType {
		case 0xc5:
			b = append(b, 0xc5)
			b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
		case 0xc6:
			b = append(b, 0xc6)
			b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		default:
			b = append(b, 0xc4, byte(len(p)))
		}
		b = append(b, p...)
	}
	str(m.alg)
	str(m.id)
	bin(m.iv)
	bin(m.nonce)
	bin(m.bytes)
	return b
}

func TestLegacyFormats(t *testing.T) {
	secret := readN(testRand(10), 32)
	iv, nonce := readN(testRand(11), 16), readN(testRand(12), 12)
	pt, aad := []byte("legacy plaintext"), []byte("legacy aad")
	keyID := "66687aadf862bd776c8fc18b8e9f8e20"

	type tc struct {
		name string
		ct   []byte
		ok   bool
	}
	for _, alg := range algs {
		k := mustKey(t, alg, secret)
		sealed := refSeal(alg, secret, iv, nonce, pt, aad)
		flipped := bytes.Clone(sealed)
		flipped[0] ^= 1
		mp := msgp{alg: "AES256-GCM_SHA256", id: keyID, iv: iv, nonce: nonce, bytes: sealed}
		with := func(f func(*msgp)) []byte { m := mp; f(&m); return m.encode() }
		tests := []tc{
			{"json AES name", makeLegacyJSON("AES-256-GCM-HMAC-SHA-256", iv, nonce, sealed), true},
			{"json ChaCha name", makeLegacyJSON("ChaCha20Poly1305", iv, nonce, sealed), true},
			{"json trailing whitespace", append(makeLegacyJSON("ChaCha20Poly1305", iv, nonce, sealed), ' ', '\n'), true},
			{"json old AES-256-GCM", makeLegacyJSON("AES-256-GCM", iv, nonce, sealed), false},
			{"json unknown aead", makeLegacyJSON("XChaCha20Poly1305", iv, nonce, sealed), false},
			{"json empty aead", makeLegacyJSON("", iv, nonce, sealed), false},
			{"json iv 15", makeLegacyJSON("ChaCha20Poly1305", iv[:15], nonce, sealed), false},
			{"json iv 17", makeLegacyJSON("ChaCha20Poly1305", append(bytes.Clone(iv), 0), nonce, sealed), false},
			{"json nonce 11", makeLegacyJSON("ChaCha20Poly1305", iv, nonce[:11], sealed), false},
			{"json nonce 13", makeLegacyJSON("ChaCha20Poly1305", iv, append(bytes.Clone(nonce), 0), sealed), false},
			{"json tampered bytes", makeLegacyJSON("ChaCha20Poly1305", iv, nonce, flipped), false},
			{"json no bytes", makeLegacyJSON("ChaCha20Poly1305", iv, nonce, nil), false},
			{"json invalid", []byte(`{"aead":"ChaCha20Poly1305",`), false},
			{"json trailing", append(makeLegacyJSON("ChaCha20Poly1305", iv, nonce, sealed), 'x'), false},
			{"json not base64", []byte(`{"aead":"ChaCha20Poly1305","iv":"!!","nonce":"!!","bytes":"!!"}`), false},

			{"msgp", mp.encode(), true},
			{"msgp chacha name", with(func(m *msgp) { m.alg = "XCHACHA20-POLY1305" }), true},
			{"msgp str8", with(func(m *msgp) { m.strType = 0xd9 }), true},
			{"msgp str16", with(func(m *msgp) { m.strType = 0xda }), true},
			{"msgp bin16", with(func(m *msgp) { m.binType = 0xc5 }), true},
			{"msgp bin32", with(func(m *msgp) { m.binType = 0xc6 }), true},
			{"msgp empty id", with(func(m *msgp) { m.id = "" }), true},
			{"msgp tampered bytes", with(func(m *msgp) { m.bytes = flipped }), false},
			{"msgp trailing byte", append(mp.encode(), 0), false},
			{"msgp truncated", mp.encode()[:len(mp.encode())-1], false},
			{"msgp unknown alg", with(func(m *msgp) { m.alg = "AES256" }), false},
			{"msgp iv 15", with(func(m *msgp) { m.iv = iv[:15] }), false},
			{"msgp nonce 13", with(func(m *msgp) { m.nonce = append(bytes.Clone(nonce), 0) }), false},
			{"msgp fixarray 4", append([]byte{0x94}, mp.encode()[1:]...), false},
			{"msgp str as bin", func() []byte { b := mp.encode(); b[1] = 0xc4; return b }(), false},
		}
		for _, tt := range tests {
			t.Run(alg.String()+"/"+tt.name, func(t *testing.T) {
				got, err := k.Decrypt(tt.ct, aad)
				if !tt.ok {
					if !errors.Is(err, ErrDecrypt) {
						t.Fatalf("got %q, %v; want ErrDecrypt", got, err)
					}
					return
				}
				if err != nil || !bytes.Equal(got, pt) {
					t.Fatalf("got %q, %v; want %q", got, err, pt)
				}
				if _, err := k.Decrypt(tt.ct, nil); !errors.Is(err, ErrDecrypt) {
					t.Fatalf("without aad: %v, want ErrDecrypt", err)
				}
			})
		}
	}
}

// TestRawStartingLikeLegacy: a raw ciphertext whose first byte happens to
// be 0x95 or '{' fails the legacy parse and decrypts as raw.
func TestRawStartingLikeLegacy(t *testing.T) {
	for _, alg := range algs {
		k, _ := NewKey(alg, nil)
		for _, first := range []byte{0x95, '{'} {
			var ct []byte
			for seed := uint64(0); ; seed++ {
				c, err := k.Encrypt(testRand(seed), []byte("p"), nil)
				if err != nil {
					t.Fatal(err)
				}
				if c[0] == first {
					ct = c
					break
				}
			}
			if p, err := k.Decrypt(ct, nil); err != nil || string(p) != "p" {
				t.Errorf("%v first byte %#x: %q, %v", alg, first, p, err)
			}
		}
	}
}

func TestHMAC(t *testing.T) {
	secret, hk := readN(testRand(20), 32), readN(testRand(21), 32)
	k, err := ImportKeyWithHMAC(ChaCha20, secret, hk)
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range [][]byte{nil, []byte("abc"), make([]byte, 64), make([]byte, 1000)} {
		got, err := k.HMAC(msg)
		mac := hmac.New(sha256.New, hk)
		mac.Write(msg)
		if err != nil || !bytes.Equal(got, mac.Sum(nil)) {
			t.Fatalf("HMAC(%d bytes) = %x, %v", len(msg), got, err)
		}
	}
	// RFC 4231 test case 2 uses a short key; ours are always 32 bytes, so
	// check the precomputed construction against crypto/hmac directly too.
	st := newMACState([]byte("Jefe"))
	want, _ := hex.DecodeString("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
	if got := st.sum(nil, []byte("what do ya want for nothing?")); !bytes.Equal(got, want) {
		t.Fatalf("RFC 4231 #2: %x", got)
	}

	noMAC, _ := ImportKeyWithHMAC(AES256, secret, nil)
	if noMAC.HasHMAC() {
		t.Fatal("HasHMAC without an HMAC key")
	}
	if _, err := noMAC.HMAC([]byte("m")); !errors.Is(err, ErrNoHMAC) {
		t.Fatalf("HMAC without key: %v", err)
	}
}

func TestZero(t *testing.T) {
	for _, alg := range algs {
		k, _ := NewKey(alg, nil)
		ct, _ := k.Encrypt(nil, []byte("p"), nil)
		m := k.m
		k.Zero()
		if m.secret != [32]byte{} || m.hmacKey != [32]byte{} || bytes.ContainsFunc(m.derive.inner, func(r rune) bool { return r != 0 }) {
			t.Fatalf("%v: material not wiped", alg)
		}
		if _, err := k.Encrypt(nil, []byte("p"), nil); !errors.Is(err, ErrZeroed) {
			t.Errorf("%v Encrypt after Zero: %v", alg, err)
		}
		if _, err := k.Decrypt(ct, nil); !errors.Is(err, ErrZeroed) {
			t.Errorf("%v Decrypt after Zero: %v", alg, err)
		}
		if _, _, err := k.GenerateDEK(nil, nil); !errors.Is(err, ErrZeroed) {
			t.Errorf("%v GenerateDEK after Zero: %v", alg, err)
		}
		if _, err := k.HMAC(nil); !errors.Is(err, ErrZeroed) {
			t.Errorf("%v HMAC after Zero: %v", alg, err)
		}
		if k.Algorithm() != 0 || k.String() != "seal.Key(zeroed)" {
			t.Errorf("%v after Zero: %v %v", alg, k.Algorithm(), k)
		}
		k.Zero() // idempotent
	}
	// A zero Key{} behaves like a zeroed key instead of panicking.
	var z Key
	if _, err := z.Encrypt(nil, nil, nil); !errors.Is(err, ErrZeroed) {
		t.Errorf("zero Key Encrypt: %v", err)
	}
	if _, err := z.HMAC(nil); !errors.Is(err, ErrZeroed) || z.String() != "seal.Key(zeroed)" {
		t.Errorf("zero Key HMAC: %v, %v", err, &z)
	}
	z.Zero()
}

// TestKeyNotPrinted: no fmt verb or slog handler shows key material.
func TestKeyNotPrinted(t *testing.T) {
	secret := bytes.Repeat([]byte{0xab}, 32)
	k, _ := ImportKeyWithHMAC(AES256, secret, bytes.Repeat([]byte{0xcd}, 32))
	type wrapper struct{ K *Key }
	var out strings.Builder
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q", "%d"} {
		fmt.Fprintf(&out, verb+"\n", k)
		fmt.Fprintf(&out, verb+"\n", wrapper{k})
		fmt.Fprintf(&out, verb+"\n", []*Key{k})
	}
	slog.New(slog.NewJSONHandler(&out, nil)).Info("k", "key", k)
	slog.New(slog.NewTextHandler(&out, nil)).Info("k", "key", k)
	s := out.String()
	for _, bad := range []string{"abab", "ABAB", "171, 171", "cdcd", "CDCD", "205, 205", "\\xab", "q6urq6ur"} {
		if strings.Contains(s, bad) {
			t.Fatalf("output contains key material (%q):\n%s", bad, s)
		}
	}
	if !strings.Contains(s, "seal.Key(AES256)") || !strings.Contains(s, `"algorithm":"AES256"`) {
		t.Fatalf("unexpected output:\n%s", s)
	}
}

// ---- benchmarks (report allocs/op) ----

func benchKey(b *testing.B, alg Algorithm) *Key {
	k, err := NewKey(alg, nil)
	if err != nil {
		b.Fatal(err)
	}
	return k
}

func BenchmarkEncrypt(b *testing.B) {
	for _, alg := range algs {
		b.Run(alg.String(), func(b *testing.B) {
			k := benchKey(b, alg)
			pt, aad := make([]byte, 32), []byte("bucket/object")
			b.ReportAllocs()
			for b.Loop() {
				if _, err := k.Encrypt(nil, pt, aad); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecrypt(b *testing.B) {
	for _, alg := range algs {
		b.Run(alg.String(), func(b *testing.B) {
			k := benchKey(b, alg)
			aad := []byte("bucket/object")
			ct, _ := k.Encrypt(nil, make([]byte, 32), aad)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := k.Decrypt(ct, aad); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkGenerateDEK(b *testing.B) {
	for _, alg := range algs {
		b.Run(alg.String(), func(b *testing.B) {
			k := benchKey(b, alg)
			aad := []byte("bucket/object")
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := k.GenerateDEK(nil, aad); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkHMAC(b *testing.B) {
	k := benchKey(b, AES256)
	msg := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.HMAC(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDeriveAES compares the precomputed HMAC state with crypto/hmac
// for the AES256 per-message key derivation.
func BenchmarkDeriveAES(b *testing.B) {
	secret, iv := make([]byte, 32), make([]byte, 16)
	b.Run("precomputed", func(b *testing.B) {
		st := newMACState(secret)
		b.ReportAllocs()
		for b.Loop() {
			s := getScratch()
			st.sumInto(s, iv)
			putScratch(s)
		}
	})
	b.Run("crypto/hmac", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			mac := hmac.New(sha256.New, secret)
			mac.Write(iv)
			mac.Sum(nil)
		}
	})
}
