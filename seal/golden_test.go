package seal

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/formats-v1.json")

const goldenPath = "testdata/formats-v1.json"

// golden freezes every stored format of the package: the REK fingerprint,
// the key material encoding, the sealed key blob (and with it the
// sealing-key derivation and the AAD) and the stanza encoding. A change
// that breaks this test breaks stored data: add a new version instead.
type golden struct {
	REK      hexBytes         `json:"rek"`
	REKID    string           `json:"rek_id"`
	Material []goldenMaterial `json:"material"`
	Sealed   []goldenSealed   `json:"sealed_keys"`
	Stanzas  []goldenStanza   `json:"stanzas"`
}

type goldenMaterial struct {
	Algorithm string   `json:"algorithm"`
	Secret    hexBytes `json:"secret"`
	HMACKey   hexBytes `json:"hmac_key,omitempty"`
	Encoded   hexBytes `json:"encoded"`
}

type goldenSealed struct {
	Name     string   `json:"name"`
	Version  uint32   `json:"version"`
	Material int      `json:"material"` // index into Material
	Nonce    hexBytes `json:"nonce"`
	Blob     hexBytes `json:"blob"`
}

type goldenStanza struct {
	KeyID     string   `json:"key_id"`
	Mechanism string   `json:"mechanism"`
	REKID     string   `json:"rek_id"`
	Wrapped   hexBytes `json:"wrapped"`
	Encoded   hexBytes `json:"encoded"`
}

type hexBytes []byte

func (h hexBytes) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(h)), nil }
func (h *hexBytes) UnmarshalText(b []byte) error {
	var err error
	*h, err = hex.DecodeString(string(b))
	return err
}

func seq(start byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

// makeGolden computes the golden file from fixed inputs with the code
// under test.
func makeGolden(t *testing.T) golden {
	g := golden{REK: seq(0x00, 32)}
	kr, err := newKeyring(g.REK)
	if err != nil {
		t.Fatal(err)
	}
	g.REKID = kr.ID()
	for _, m := range []goldenMaterial{
		{Algorithm: "AES256", Secret: seq(0x20, 32), HMACKey: seq(0x40, 32)},
		{Algorithm: "ChaCha20", Secret: seq(0x60, 32)},
	} {
		k := goldenKey(t, m)
		if m.Encoded, err = k.m.appendBinary(nil); err != nil {
			t.Fatal(err)
		}
		g.Material = append(g.Material, m)
	}
	for _, s := range []goldenSealed{
		{Name: "my-key", Version: 1, Material: 0, Nonce: seq(0xa0, 12)},
		{Name: "legacy/no-hmac", Version: 4294967295, Material: 1, Nonce: seq(0xb0, 12)},
	} {
		if s.Blob, err = kr.sealKey(s.Name, s.Version, goldenKey(t, g.Material[s.Material]), bytes.NewReader(s.Nonce)); err != nil {
			t.Fatal(err)
		}
		g.Sealed = append(g.Sealed, s)
	}
	for _, s := range []goldenStanza{
		{KeyID: "kmsd-wrap-1", Mechanism: "CKM_AES_GCM", REKID: g.REKID, Wrapped: seq(0xf0, 16)},
		{},
	} {
		st := Stanza{KeyID: s.KeyID, Mechanism: s.Mechanism, REKID: s.REKID, Wrapped: s.Wrapped}
		if s.Encoded, err = st.MarshalBinary(); err != nil {
			t.Fatal(err)
		}
		g.Stanzas = append(g.Stanzas, s)
	}
	return g
}

func goldenKey(t *testing.T, m goldenMaterial) *Key {
	t.Helper()
	alg, err := ParseAlgorithm(m.Algorithm)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ImportKeyWithHMAC(alg, m.Secret, m.HMACKey)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestGoldenFormats(t *testing.T) {
	got := makeGolden(t)
	if *update {
		b, err := json.MarshalIndent(got, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenPath, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	var want golden
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}

	if len(want.Material) != len(got.Material) || len(want.Sealed) != len(got.Sealed) || len(want.Stanzas) != len(got.Stanzas) {
		t.Fatalf("%s has other entries than the test makes; run with -update after review", goldenPath)
	}
	// Encoding side: today's code makes exactly the frozen bytes.
	if got.REKID != want.REKID {
		t.Errorf("REKID %s, golden %s", got.REKID, want.REKID)
	}
	for i := range want.Material {
		if !bytes.Equal(got.Material[i].Encoded, want.Material[i].Encoded) {
			t.Errorf("material %d: %x, golden %x", i, got.Material[i].Encoded, want.Material[i].Encoded)
		}
	}
	for i := range want.Sealed {
		if !bytes.Equal(got.Sealed[i].Blob, want.Sealed[i].Blob) {
			t.Errorf("sealed key %d: %x, golden %x", i, got.Sealed[i].Blob, want.Sealed[i].Blob)
		}
	}
	for i := range want.Stanzas {
		if !bytes.Equal(got.Stanzas[i].Encoded, want.Stanzas[i].Encoded) {
			t.Errorf("stanza %d: %x, golden %x", i, got.Stanzas[i].Encoded, want.Stanzas[i].Encoded)
		}
	}

	// Decoding side: the frozen bytes still read back to the inputs.
	kr, err := newKeyring(want.REK)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range want.Sealed {
		k, err := kr.OpenKey(s.Name, s.Version, s.Blob)
		if err != nil {
			t.Fatalf("sealed key %d: %v", i, err)
		}
		assertSameKey(t, k, goldenKey(t, want.Material[s.Material]))
		enc, _ := k.m.appendBinary(nil)
		if !bytes.Equal(enc, want.Material[s.Material].Encoded) {
			t.Errorf("sealed key %d: material %x", i, enc)
		}
	}
	for i, s := range want.Stanzas {
		var st Stanza
		if err := st.UnmarshalBinary(s.Encoded); err != nil {
			t.Fatalf("stanza %d: %v", i, err)
		}
		if st.KeyID != s.KeyID || st.Mechanism != s.Mechanism || st.REKID != s.REKID || !bytes.Equal(st.Wrapped, s.Wrapped) {
			t.Errorf("stanza %d: %+v", i, st)
		}
	}
}
