package seal

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
)

const handoverGoldenPath = "testdata/handover-v1.json"

// handoverGolden freezes the hand-over box format: fixed REK, recipient
// key, ephemeral key and nonce give exactly these bytes.
type handoverGolden struct {
	REK          hexBytes `json:"rek"`
	REKID        string   `json:"rek_id"`
	RecipientKey hexBytes `json:"recipient_private_key"`
	RecipientPub hexBytes `json:"recipient_public_key"`
	EphemeralKey hexBytes `json:"ephemeral_private_key"`
	Nonce        hexBytes `json:"nonce"`
	Box          hexBytes `json:"box"`
}

func x25519Key(t *testing.T, scalar []byte) *ecdh.PrivateKey {
	t.Helper()
	k, err := ecdh.X25519().NewPrivateKey(scalar)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func makeHandoverGolden(t *testing.T) handoverGolden {
	g := handoverGolden{
		REK:          seq(0x00, 32),
		RecipientKey: seq(0x10, 32),
		EphemeralKey: seq(0x30, 32),
		Nonce:        seq(0xc0, 12),
	}
	kr, err := newKeyring(g.REK)
	if err != nil {
		t.Fatal(err)
	}
	g.REKID = kr.ID()
	g.RecipientPub = x25519Key(t, g.RecipientKey).PublicKey().Bytes()
	if g.Box, err = kr.handover(g.RecipientPub, x25519Key(t, g.EphemeralKey), g.Nonce); err != nil {
		t.Fatal(err)
	}
	return g
}

func TestHandoverGolden(t *testing.T) {
	got := makeHandoverGolden(t)
	if *update {
		b, err := json.MarshalIndent(got, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(handoverGoldenPath, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(handoverGoldenPath)
	if err != nil {
		t.Fatal(err)
	}
	var want handoverGolden
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	// Encoding side: today's code makes exactly the frozen bytes.
	if !bytes.Equal(got.Box, want.Box) {
		t.Errorf("box %x,\ngolden %x", got.Box, want.Box)
	}
	if !bytes.Equal(got.RecipientPub, want.RecipientPub) || got.REKID != want.REKID {
		t.Errorf("inputs changed: %+v", got)
	}
	if len(want.Box) != HandoverBoxSize {
		t.Errorf("golden box is %d bytes, want %d", len(want.Box), HandoverBoxSize)
	}
	// Decoding side: the frozen box opens to the frozen REK.
	hk := newHandoverKey(x25519Key(t, want.RecipientKey))
	kr, err := hk.Open(want.Box, want.REKID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kr.rek[:], want.REK) || kr.ID() != want.REKID {
		t.Errorf("opened REK %s, want %s", kr.ID(), want.REKID)
	}
}

func randomKeyring(t *testing.T) *Keyring {
	t.Helper()
	kr, _, err := Init(t.Context(), NewSoftware(seq(0x80, 32), "test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kr.Destroy)
	return kr
}

func newHK(t *testing.T) *HandoverKey {
	t.Helper()
	hk, err := NewHandoverKey()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hk.Destroy)
	return hk
}

func TestHandoverRoundTrip(t *testing.T) {
	kr := randomKeyring(t)
	hk := newHK(t)
	if len(hk.Public()) != HandoverPublicKeySize {
		t.Fatalf("public key %d bytes", len(hk.Public()))
	}
	box, err := kr.Handover(hk.Public())
	if err != nil {
		t.Fatal(err)
	}
	if len(box) != HandoverBoxSize {
		t.Fatalf("box %d bytes, want %d", len(box), HandoverBoxSize)
	}
	got, err := hk.Open(box, kr.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer got.Destroy()
	if got.ID() != kr.ID() || *got.rek != *kr.rek {
		t.Fatal("opened another REK")
	}
	// The received keyring opens what the original sealed.
	k, err := NewKey(AES256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := kr.SealKey("k", 1, k)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := got.OpenKey("k", 1, blob); err != nil {
		t.Fatalf("received keyring cannot open a sealed key: %v", err)
	}
	// A second box for the same recipient differs (fresh ephemeral key).
	box2, err := kr.Handover(hk.Public())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(box[1+rekIDSize:], box2[1+rekIDSize:]) {
		t.Fatal("two boxes share their ephemeral key and nonce")
	}
}

func TestHandoverWrongRecipient(t *testing.T) {
	kr := randomKeyring(t)
	box, err := kr.Handover(newHK(t).Public())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newHK(t).Open(box, kr.ID()); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("other recipient: err = %v, want ErrDecrypt", err)
	}
}

func TestHandoverTamperEveryByte(t *testing.T) {
	kr := randomKeyring(t)
	hk := newHK(t)
	box, err := kr.Handover(hk.Public())
	if err != nil {
		t.Fatal(err)
	}
	for i := range box {
		for _, mask := range []byte{0x01, 0x80} {
			bad := bytes.Clone(box)
			bad[i] ^= mask
			got, err := hk.Open(bad, kr.ID())
			if err == nil {
				got.Destroy()
				t.Fatalf("byte %d ^ %#x: opened", i, mask)
			}
			var want error
			switch {
			case i == 0:
				want = ErrFormat
			case i < 1+rekIDSize:
				want = ErrREKMismatch
			default:
				want = ErrDecrypt
			}
			if !errors.Is(err, want) {
				t.Fatalf("byte %d ^ %#x: err = %v, want %v", i, mask, err, want)
			}
		}
	}
	for _, bad := range [][]byte{nil, box[:1], box[:len(box)-1], append(bytes.Clone(box), 0)} {
		if _, err := hk.Open(bad, kr.ID()); !errors.Is(err, ErrFormat) {
			t.Fatalf("box of %d bytes: err = %v, want ErrFormat", len(bad), err)
		}
	}
}

func TestHandoverWrongREKID(t *testing.T) {
	kr := randomKeyring(t)
	other := randomKeyring(t)
	hk := newHK(t)
	box, err := kr.Handover(hk.Public())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{other.ID(), "", "zz", strings.ToUpper(kr.ID()) + "00"} {
		if _, err := hk.Open(box, id); !errors.Is(err, ErrREKMismatch) {
			t.Errorf("want id %q: err = %v, want ErrREKMismatch", id, err)
		}
	}

	// A sender that labels REK X with the id of REK Y is caught after
	// decryption: the receiver recomputes the fingerprint.
	liar, err := newKeyring(kr.rek[:])
	if err != nil {
		t.Fatal(err)
	}
	liar.fp, liar.id = other.fp, other.id
	box, err = liar.Handover(hk.Public())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hk.Open(box, other.ID()); !errors.Is(err, ErrREKMismatch) {
		t.Fatalf("mislabelled REK: err = %v, want ErrREKMismatch", err)
	}
}

func TestHandoverBadPublicKey(t *testing.T) {
	kr := randomKeyring(t)
	for _, pub := range [][]byte{nil, make([]byte, 31), make([]byte, 33), make([]byte, 32) /* low order */} {
		if _, err := kr.Handover(pub); !errors.Is(err, ErrHandoverKey) {
			t.Errorf("public key %x: err = %v, want ErrHandoverKey", pub, err)
		}
	}
}

func TestHandoverDestroyed(t *testing.T) {
	kr := randomKeyring(t)
	hk := newHK(t)
	box, err := kr.Handover(hk.Public())
	if err != nil {
		t.Fatal(err)
	}
	hk.Destroy()
	if _, err := hk.Open(box, kr.ID()); !errors.Is(err, ErrSealed) {
		t.Fatalf("destroyed hand-over key: err = %v, want ErrSealed", err)
	}
	kr.Destroy()
	if _, err := kr.Handover(newHK(t).Public()); !errors.Is(err, ErrSealed) {
		t.Fatalf("destroyed keyring: err = %v, want ErrSealed", err)
	}
	var nilKR *Keyring
	if _, err := nilKR.Handover(newHK(t).Public()); !errors.Is(err, ErrSealed) {
		t.Fatalf("nil keyring: err = %v, want ErrSealed", err)
	}
}

func TestHandoverKeyIsNeverPrinted(t *testing.T) {
	hk := newHK(t)
	secret := hex.EncodeToString(hk.priv.Bytes())
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "hk", hk)
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "hk", hk)
	out := fmt.Sprintf("%v %+v %#v %s %x %q", hk, hk, hk, hk, hk, hk) + logs.String()
	if strings.Contains(out, secret) || strings.Contains(strings.ToUpper(out), strings.ToUpper(secret)) {
		t.Fatalf("private key printed: %s", out)
	}
	if !strings.Contains(logs.String(), hk.fingerprint()) {
		t.Fatalf("log lacks the public fingerprint: %s", logs.String())
	}
}
