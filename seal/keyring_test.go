package seal

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func testSealer(t testing.TB, seed uint64, id string) *Software {
	t.Helper()
	return NewSoftware(readN(testRand(seed), 32), id)
}

func testKeyring(t testing.TB) (*Keyring, Stanza, *Software) {
	t.Helper()
	s := testSealer(t, 1, "hsm-key-1")
	kr, st, err := Init(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kr.Destroy)
	return kr, st, s
}

func TestInitUnseal(t *testing.T) {
	ctx := context.Background()
	kr, st, s := testKeyring(t)
	if st.KeyID != "hsm-key-1" || st.Mechanism != SoftwareMechanism || st.REKID != kr.ID() || len(st.Wrapped) != 12+32+16 {
		t.Fatalf("stanza %+v", st)
	}
	if len(kr.ID()) != 32 || strings.Trim(kr.ID(), "0123456789abcdef") != "" {
		t.Fatalf("REKID %q is not 32 lowercase hex characters", kr.ID())
	}
	// The REKID is the documented fingerprint, not the REK itself.
	mac := hmac.New(sha256.New, kr.rek[:])
	mac.Write([]byte("kmsd rek id v1"))
	if want := hex.EncodeToString(mac.Sum(nil)[:16]); kr.ID() != want {
		t.Fatalf("REKID %s, want %s", kr.ID(), want)
	}
	if strings.Contains(hex.EncodeToString(kr.rek[:]), kr.ID()[:8]) {
		t.Fatal("REKID reveals REK bytes")
	}

	kr2, err := Unseal(ctx, s, st)
	if err != nil {
		t.Fatal(err)
	}
	defer kr2.Destroy()
	if kr2.ID() != kr.ID() || *kr2.rek != *kr.rek {
		t.Fatal("unsealed another REK")
	}

	// Two Inits make two REKs.
	kr3, st3, err := Init(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	defer kr3.Destroy()
	if kr3.ID() == kr.ID() {
		t.Fatal("Init made the same REK twice")
	}

	// A stanza wrapping another REK under a stale REKID is refused.
	bad := st3
	bad.REKID = st.REKID
	if _, err := Unseal(ctx, s, bad); !errors.Is(err, ErrREKMismatch) {
		t.Fatalf("Unseal with a wrong REKID: %v, want ErrREKMismatch", err)
	}
	bad = st
	bad.REKID = ""
	if _, err := Unseal(ctx, s, bad); !errors.Is(err, ErrREKMismatch) {
		t.Fatalf("Unseal without REKID: %v, want ErrREKMismatch", err)
	}
	// A stanza for another sealer key is "not mine".
	if _, err := Unseal(ctx, testSealer(t, 2, "hsm-key-2"), st); !errors.Is(err, ErrStanzaMismatch) {
		t.Fatalf("Unseal with another sealer: %v, want ErrStanzaMismatch", err)
	}
	// Same key id, other key material: the unwrap fails (fatal, not "not mine").
	if _, err := Unseal(ctx, testSealer(t, 3, "hsm-key-1"), st); err == nil || errors.Is(err, ErrStanzaMismatch) || errors.Is(err, ErrREKMismatch) {
		t.Fatalf("Unseal with other key material: %v", err)
	}
	// The wrapped REK is bound to the key id (AAD): relabelling fails.
	relabel := NewSoftware(readN(testRand(1), 32), "hsm-key-9")
	moved := st
	moved.KeyID = "hsm-key-9"
	if _, err := Unseal(ctx, relabel, moved); err == nil {
		t.Fatal("Unseal of a relabelled stanza succeeded")
	}
	// Tampered wrap.
	tampered := st
	tampered.Wrapped = bytes.Clone(st.Wrapped)
	tampered.Wrapped[20] ^= 1
	if _, err := Unseal(ctx, s, tampered); err == nil {
		t.Fatal("Unseal of a tampered stanza succeeded")
	}
}

func TestRewrapStanza(t *testing.T) {
	ctx := context.Background()
	kr, _, _ := testKeyring(t)
	k, _ := NewKey(AES256, nil)
	blob, err := kr.SealKey("k", 1, k)
	if err != nil {
		t.Fatal(err)
	}
	other := testSealer(t, 7, "node-2-key")
	st2, err := kr.Stanza(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if st2.KeyID != "node-2-key" || st2.REKID != kr.ID() {
		t.Fatalf("stanza %+v", st2)
	}
	kr2, err := Unseal(ctx, other, st2)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := kr2.OpenKey("k", 1, blob)
	if err != nil {
		t.Fatal(err)
	}
	assertSameKey(t, k, k2)
}

// lyingSealer unwraps something other than what it wrapped.
type lyingSealer struct{ *Software }

func (l lyingSealer) Unwrap(ctx context.Context, ct, aad []byte) ([]byte, error) {
	p, err := l.Software.Unwrap(ctx, ct, aad)
	if err == nil {
		p[0] ^= 1
	}
	return p, err
}

// failingSealer fails every call.
type failingSealer struct{ *Software }

func (failingSealer) Wrap(context.Context, []byte, []byte) ([]byte, error) {
	return nil, errors.New("hsm: CKR_DEVICE_ERROR")
}

func TestInitFailures(t *testing.T) {
	s := testSealer(t, 1, "id")
	if _, _, err := Init(context.Background(), lyingSealer{s}); err == nil {
		t.Fatal("Init with a sealer that cannot unwrap succeeded")
	}
	if _, _, err := Init(context.Background(), failingSealer{s}); err == nil || !strings.Contains(err.Error(), "CKR_DEVICE_ERROR") {
		t.Fatalf("Init with a failing sealer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := Init(ctx, s); !errors.Is(err, context.Canceled) {
		t.Fatalf("Init with a cancelled context: %v", err)
	}
	if _, _, err := Init(context.Background(), NewSoftware(make([]byte, 16), "short")); !errors.Is(err, ErrInvalidKeySize) {
		t.Fatalf("Init with a 16-byte software key: %v", err)
	}
}

func assertSameKey(t *testing.T, a, b *Key) {
	t.Helper()
	if a.m.alg != b.m.alg || a.m.secret != b.m.secret || a.m.hasHMAC != b.m.hasHMAC || a.m.hmacKey != b.m.hmacKey {
		t.Fatal("keys differ")
	}
	ct, _ := a.Encrypt(nil, []byte("x"), nil)
	if p, err := b.Decrypt(ct, nil); err != nil || string(p) != "x" {
		t.Fatalf("keys do not interoperate: %v", err)
	}
}

func TestSealOpenKey(t *testing.T) {
	kr, _, _ := testKeyring(t)
	other, _, _ := testKeyring(t)
	for _, alg := range algs {
		for _, withMAC := range []bool{true, false} {
			name := fmt.Sprintf("%v-hmac-%v", alg, withMAC)
			var hk []byte
			if withMAC {
				hk = readN(testRand(3), 32)
			}
			k, _ := ImportKeyWithHMAC(alg, readN(testRand(4), 32), hk)
			blob, err := kr.SealKey(name, 7, k)
			if err != nil {
				t.Fatal(err)
			}
			matLen := materialLenNoMAC
			if withMAC {
				matLen = materialLenMAC
			}
			if len(blob) != matLen+blobOverhead || blob[0] != blobV1 || !bytes.Equal(blob[1:17], kr.fp[:]) {
				t.Fatalf("%s: blob %x", name, blob)
			}
			if bytes.Contains(blob, k.m.secret[:8]) {
				t.Fatalf("%s: blob contains the secret", name)
			}
			got, err := kr.OpenKey(name, 7, blob)
			if err != nil {
				t.Fatal(err)
			}
			assertSameKey(t, k, got)
			if again, _ := kr.SealKey(name, 7, k); bytes.Equal(again, blob) {
				t.Fatalf("%s: sealing is deterministic", name)
			}

			fails := []struct {
				what    string
				kr      *Keyring
				name    string
				version uint32
				blob    []byte
			}{
				{"other name", kr, name + "x", 7, blob},
				{"name prefix", kr, name[:len(name)-1], 7, blob},
				{"other version", kr, name, 8, blob},
				{"version 0", kr, name, 0, blob},
				{"other REK", other, name, 7, blob},
				{"truncated", kr, name, 7, blob[:len(blob)-1]},
				{"header only", kr, name, 7, blob[:blobOverhead-1]},
				{"empty", kr, name, 7, nil},
			}
			for i := range blob {
				b := bytes.Clone(blob)
				b[i] ^= 0x80
				fails = append(fails, struct {
					what    string
					kr      *Keyring
					name    string
					version uint32
					blob    []byte
				}{fmt.Sprintf("flip byte %d", i), kr, name, 7, b})
			}
			for _, f := range fails {
				if k, err := f.kr.OpenKey(f.name, f.version, f.blob); !errors.Is(err, ErrDecrypt) || k != nil {
					t.Errorf("%s: %s: %v, want ErrDecrypt", name, f.what, err)
				}
			}
		}
	}
}

// TestKeyAADUnambiguous: name and version cannot be traded against each
// other through the encoding.
func TestKeyAADUnambiguous(t *testing.T) {
	h := make([]byte, blobHeaderSize)
	seen := map[string]string{}
	for _, c := range []struct {
		name string
		v    uint32
	}{{"a", 1}, {"a\x00\x00\x00", 1}, {"", 1}, {"a", 256}, {"ab", 1}} {
		k := string(keyAAD(h, c.name, c.v))
		if prev, ok := seen[k]; ok {
			t.Fatalf("AAD of %q/%d equals that of %s", c.name, c.v, prev)
		}
		seen[k] = fmt.Sprintf("%q/%d", c.name, c.v)
	}
}

func TestDestroy(t *testing.T) {
	kr, st, s := testKeyring(t)
	k, _ := NewKey(ChaCha20, nil)
	blob, _ := kr.SealKey("k", 1, k)
	rek, sub := kr.rek, kr.subKS
	id := kr.ID()
	kr.Destroy()
	if *rek != [32]byte{} || *sub != [32]byte{} {
		t.Fatal("Destroy did not zero the REK")
	}
	if _, err := kr.SealKey("k", 1, k); !errors.Is(err, ErrSealed) {
		t.Errorf("SealKey after Destroy: %v", err)
	}
	if _, err := kr.OpenKey("k", 1, blob); !errors.Is(err, ErrSealed) {
		t.Errorf("OpenKey after Destroy: %v", err)
	}
	if _, err := kr.Stanza(context.Background(), s); !errors.Is(err, ErrSealed) {
		t.Errorf("Stanza after Destroy: %v", err)
	}
	if kr.ID() != id {
		t.Error("ID changed by Destroy")
	}
	kr.Destroy() // idempotent
	// The key opened before is unaffected, and the stanza still unseals.
	if _, err := k.Encrypt(nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	kr2, err := Unseal(context.Background(), s, st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kr2.OpenKey("k", 1, blob); err != nil {
		t.Fatal(err)
	}

	var nilKR *Keyring
	if _, err := nilKR.SealKey("k", 1, k); !errors.Is(err, ErrSealed) {
		t.Errorf("nil SealKey: %v", err)
	}
	if _, err := nilKR.OpenKey("k", 1, blob); !errors.Is(err, ErrSealed) {
		t.Errorf("nil OpenKey: %v", err)
	}
	if _, err := nilKR.Stanza(context.Background(), s); !errors.Is(err, ErrSealed) {
		t.Errorf("nil Stanza: %v", err)
	}
	if nilKR.ID() != "" {
		t.Error("nil ID")
	}
	nilKR.Destroy()
}

func TestSealKeyZeroedOrNil(t *testing.T) {
	kr, _, _ := testKeyring(t)
	k, _ := NewKey(AES256, nil)
	k.Zero()
	if _, err := kr.SealKey("k", 1, k); !errors.Is(err, ErrZeroed) {
		t.Errorf("SealKey of a zeroed key: %v", err)
	}
	if _, err := kr.SealKey("k", 1, nil); err == nil {
		t.Error("SealKey of nil succeeded")
	}
}

func TestKeyringNotPrinted(t *testing.T) {
	kr, _, s := testKeyring(t)
	var out strings.Builder
	for _, verb := range []string{"%v", "%+v", "%#v", "%x", "%s", "%d"} {
		fmt.Fprintf(&out, verb+"|", kr)
		fmt.Fprintf(&out, verb+"|", s)
		fmt.Fprintf(&out, verb+"|", struct{ K *Keyring }{kr})
	}
	slog.New(slog.NewJSONHandler(&out, nil)).Info("kr", "keyring", kr, "sealer", s)
	got := out.String()
	for _, secret := range [][]byte{kr.rek[:], kr.subKS[:], readN(testRand(1), 32)} {
		for _, enc := range []string{hex.EncodeToString(secret[:6]), strings.ToUpper(hex.EncodeToString(secret[:6])), fmt.Sprint(secret[:4])[1:]} {
			if strings.Contains(got, enc) {
				t.Fatalf("output shows secret bytes (%s):\n%s", enc, got)
			}
		}
	}
	if !strings.Contains(got, "seal.Keyring("+kr.ID()+")") || !strings.Contains(got, `"rek_id":"`+kr.ID()+`"`) {
		t.Fatalf("unexpected output:\n%s", got)
	}
}

func TestSoftware(t *testing.T) {
	ctx := context.Background()
	s := testSealer(t, 1, "id")
	if s.KeyID() != "id" || s.Mechanism() != "software-aes-gcm" {
		t.Fatal("KeyID/Mechanism")
	}
	ct, err := s.Wrap(ctx, []byte("secret"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if p, err := s.Unwrap(ctx, ct, []byte("aad")); err != nil || string(p) != "secret" {
		t.Fatalf("Unwrap: %q, %v", p, err)
	}
	for _, c := range []struct {
		name    string
		ct, aad []byte
	}{
		{"other aad", ct, []byte("aad2")},
		{"short", ct[:27], []byte("aad")},
		{"tampered", append(bytes.Clone(ct[:len(ct)-1]), ct[len(ct)-1]^1), []byte("aad")},
	} {
		if _, err := s.Unwrap(ctx, c.ct, c.aad); !errors.Is(err, ErrDecrypt) {
			t.Errorf("%s: %v, want ErrDecrypt", c.name, err)
		}
	}
	bad := NewSoftware(make([]byte, 31), "bad")
	if _, err := bad.Wrap(ctx, nil, nil); !errors.Is(err, ErrInvalidKeySize) {
		t.Errorf("Wrap with a 31-byte key: %v", err)
	}
	if _, err := bad.Unwrap(ctx, ct, nil); !errors.Is(err, ErrInvalidKeySize) {
		t.Errorf("Unwrap with a 31-byte key: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Wrap(cctx, nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Wrap with a cancelled context: %v", err)
	}
	// The key was copied.
	key := readN(testRand(5), 32)
	s2 := NewSoftware(key, "c")
	ct2, _ := s2.Wrap(ctx, []byte("x"), nil)
	clear(key)
	if _, err := s2.Unwrap(ctx, ct2, nil); err != nil {
		t.Fatal("NewSoftware did not copy the key")
	}
}

func TestStanzaEncoding(t *testing.T) {
	st := Stanza{KeyID: "kid", Mechanism: "mech", REKID: "00112233445566778899aabbccddeeff", Wrapped: []byte{1, 2, 3}}
	b, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Stanza
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if got.KeyID != st.KeyID || got.Mechanism != st.Mechanism || got.REKID != st.REKID || !bytes.Equal(got.Wrapped, st.Wrapped) {
		t.Fatalf("round trip: %+v", got)
	}
	b[len(b)-1] = 9
	if got.Wrapped[2] != 3 {
		t.Fatal("UnmarshalBinary retained its input")
	}
	b[len(b)-1] = 3

	// Empty stanza round-trips too.
	e, _ := Stanza{}.MarshalBinary()
	if !bytes.Equal(e, []byte{1, 0, 0, 0, 0, 0, 0, 0, 0}) {
		t.Fatalf("empty stanza %x", e)
	}

	// Every truncation, trailing data and other versions are refused, and
	// the target is left unchanged.
	bad := [][]byte{nil, {0}, {2}, append(bytes.Clone(b), 0)}
	for i := 1; i < len(b); i++ {
		bad = append(bad, b[:i])
	}
	v2 := bytes.Clone(b)
	v2[0] = 2
	bad = append(bad, v2)
	for _, in := range bad {
		keep := Stanza{KeyID: "keep"}
		if err := keep.UnmarshalBinary(in); !errors.Is(err, ErrFormat) || keep.KeyID != "keep" {
			t.Errorf("UnmarshalBinary(%x): %v, %+v", in, err, keep)
		}
	}
	if _, err := (Stanza{Wrapped: make([]byte, 65536)}).MarshalBinary(); !errors.Is(err, ErrFormat) {
		t.Errorf("64 KiB field: %v", err)
	}
	if _, err := (Stanza{Wrapped: make([]byte, 65535)}).MarshalBinary(); err != nil {
		t.Errorf("65535-byte field: %v", err)
	}
}

func TestMaterialEncoding(t *testing.T) {
	secret, hk := readN(testRand(1), 32), readN(testRand(2), 32)
	for _, alg := range algs {
		for _, h := range [][]byte{nil, hk} {
			k, _ := ImportKeyWithHMAC(alg, secret, h)
			b, err := k.m.appendBinary(nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseMaterial(b)
			if err != nil {
				t.Fatal(err)
			}
			assertSameKey(t, k, got)
		}
	}
	k, _ := ImportKeyWithHMAC(AES256, secret, hk)
	good, _ := k.m.appendBinary(nil)
	noMAC, _ := ImportKeyWithHMAC(AES256, secret, nil)
	goodNoMAC, _ := noMAC.m.appendBinary(nil)
	mod := func(b []byte, i int, v byte) []byte { b = bytes.Clone(b); b[i] = v; return b }
	bad := map[string][]byte{
		"empty":             nil,
		"version 0":         mod(good, 0, 0),
		"version 2":         mod(good, 0, 2),
		"algorithm 0":       mod(good, 1, 0),
		"algorithm 3":       mod(good, 1, 3),
		"hasHMAC 2":         mod(good, 34, 2),
		"hasHMAC 0, long":   mod(good, 34, 0),
		"hasHMAC 1, short":  mod(goodNoMAC, 34, 1),
		"truncated":         good[:len(good)-1],
		"trailing":          append(bytes.Clone(good), 0),
		"no-hmac trailing":  append(bytes.Clone(goodNoMAC), 0),
		"no-hmac truncated": goodNoMAC[:len(goodNoMAC)-1],
	}
	for name, b := range bad {
		if _, err := parseMaterial(b); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
}
