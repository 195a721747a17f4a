package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden vectors in testdata/")

func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// golden compares got with testdata/name (hex, whitespace ignored), or
// rewrites the file with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		var b strings.Builder
		h := hex.EncodeToString(got)
		for len(h) > 64 {
			b.WriteString(h[:64] + "\n")
			h = h[64:]
		}
		b.WriteString(h + "\n")
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run Golden -update to create)", err)
	}
	want, err := hex.DecodeString(strings.Join(strings.Fields(string(raw)), ""))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: encoding changed\n got %x\nwant %x\n(a frozen format: add a new version instead)", path, got, want)
	}
}

func goldenKey() Key {
	return Key{
		Name:      "my-key",
		Algorithm: 1,
		Version:   1,
		Sealed:    []byte{0xde, 0xad, 0xbe, 0xef},
		CreatedAt: time.Date(2025, 6, 1, 12, 30, 45, 123456789, time.UTC),
		CreatedBy: "3ecfcdf38fcbe141",
		Imported:  true,
		RequestID: [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
	}
}

var goldenCommands = []struct {
	file string
	cmd  Command
}{
	{"cmd_create_key.hex", &CreateKey{Key: goldenKey()}},
	{"cmd_create_key_zero.hex", &CreateKey{Key: Key{Name: "z"}}},
	{"cmd_delete_key.hex", &DeleteKey{Name: "my-key", RequestID: [16]byte{15: 0xff}}},
	{"cmd_put_stanza.hex", &PutStanza{KeyID: "hsm-key-1", REKID: "rek-fingerprint", Stanza: []byte("opaque stanza")}},
}

func TestGoldenCommands(t *testing.T) {
	for _, tc := range goldenCommands {
		t.Run(tc.file, func(t *testing.T) {
			b, err := Encode(tc.cmd)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.file, b)
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tc.cmd) {
				t.Fatalf("round trip:\n got %#v\nwant %#v", got, tc.cmd)
			}
		})
	}
}

func TestGoldenRecords(t *testing.T) {
	k := goldenKey()
	b := encodeKeyRecord(&k)
	golden(t, "record_key.hex", b)
	if got, err := decodeKeyRecord(b); err != nil || !reflect.DeepEqual(got, k) {
		t.Fatalf("key record round trip: %+v, %v", got, err)
	}
	s := PutStanza{KeyID: "hsm-key-1", REKID: "rek-fingerprint", Stanza: []byte("opaque stanza")}
	b = encodeStanzaRecord(&s)
	golden(t, "record_stanza.hex", b)
	if got, err := decodeStanzaRecord(b); err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("stanza record round trip: %+v, %v", got, err)
	}
	b = encodeTombstone([16]byte{15: 0xff})
	golden(t, "record_tombstone.hex", b)
	if got, err := decodeTombstone(b); err != nil || got != [16]byte{15: 0xff} {
		t.Fatalf("tombstone round trip: %x, %v", got, err)
	}
}

func TestGoldenSnapshot(t *testing.T) {
	f := newTestFSM(t, "")
	f.apply(t, 1, &CreateKey{Key: goldenKey()})
	f.apply(t, 2, &PutStanza{KeyID: "hsm-key-1", REKID: "rek-fingerprint", Stanza: []byte("opaque stanza")})
	f.apply(t, 3, &CreateKey{Key: Key{Name: "gone", RequestID: [16]byte{1}}})
	f.apply(t, 4, &DeleteKey{Name: "gone", RequestID: [16]byte{2}})
	b := persist(t, f.FSM)
	golden(t, "snapshot_v1.hex", b)
	// The golden file itself restores.
	if *update {
		return
	}
	raw, _ := os.ReadFile(filepath.Join("testdata", "snapshot_v1.hex"))
	want, _ := hex.DecodeString(strings.Join(strings.Fields(string(raw)), ""))
	info, err := VerifySnapshot(bytes.NewReader(want))
	if err != nil || info.Index != 4 || info.Keys != 1 || info.Tombstones != 1 || info.Stanzas != 1 {
		t.Fatalf("VerifySnapshot(golden) = %+v, %v", info, err)
	}
}

func TestDecodeErrors(t *testing.T) {
	valid, _ := Encode(&DeleteKey{Name: "n"})
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"unknown type", []byte{0x7f}, ErrUnknownCommand},
		{"unknown type 0", []byte{0}, ErrUnknownCommand},
		{"no version", []byte{byte(CmdDeleteKey)}, ErrMalformed},
		{"future version", []byte{byte(CmdDeleteKey), 2}, ErrMalformed},
		{"truncated", valid[:len(valid)-1], ErrMalformed},
		{"trailing", append(bytes.Clone(valid), 0), ErrMalformed},
		{"huge length", []byte{byte(CmdDeleteKey), 1, 0xff, 0xff, 0xff, 0xff, 0x0f}, ErrMalformed},
		{"bad bool", func() []byte {
			b, _ := Encode(&CreateKey{Key: Key{Name: "x"}})
			b[len(b)-17] = 2
			return b
		}(), ErrMalformed},
	}
	for i, tc := range tests {
		if _, err := Decode(tc.b); !errors.Is(err, tc.want) {
			t.Fatalf("Test %d (%s): Decode = %v, want %v", i, tc.name, err, tc.want)
		}
	}
	// Unknown but ignorable.
	c, err := Decode([]byte{0xC2, 1, 2})
	ig, ok := c.(*Ignored)
	if err != nil || !ok || ig.Raw != 0xC2 || !bytes.Equal(ig.Payload, []byte{1, 2}) {
		t.Fatalf("Decode(ignorable) = %#v, %v", c, err)
	}
	// A known type with the flag decodes as that type.
	b, _ := Encode(&DeleteKey{Name: "n"})
	b[0] |= byte(IgnorableFlag)
	if c, err := Decode(b); err != nil || c.Type() != CmdDeleteKey {
		t.Fatalf("Decode(flagged known) = %#v, %v", c, err)
	}
	if _, err := Encode(&Ignored{Raw: 0xC2}); err == nil {
		t.Fatal("Encode(Ignored) succeeded")
	}
	if _, err := Encode(nil); err == nil {
		t.Fatal("Encode(nil) succeeded")
	}
}

func FuzzDecode(f *testing.F) {
	for _, tc := range goldenCommands {
		b, _ := Encode(tc.cmd)
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0x81, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Decode(b)
		if err != nil {
			return
		}
		if _, ok := c.(*Ignored); ok {
			return
		}
		// Whatever decodes must re-encode to the same bytes (modulo the
		// ignorable flag on a known type) and decode again.
		out, err := Encode(c)
		if err != nil {
			t.Fatalf("Encode(Decode(%x)): %v", b, err)
		}
		want := bytes.Clone(b)
		want[0] &^= byte(IgnorableFlag)
		if !bytes.Equal(out, want) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, out)
		}
	})
}

func FuzzVerifySnapshot(f *testing.F) {
	e := &enc{b: encodeSnapHeader(SnapshotHeader{Version: 1, Index: 1, Term: 1, Records: 1})}
	e.str("m/rekid")
	e.str("r")
	f.Add(append(e.b, sha256Sum(e.b)...))
	f.Add([]byte(snapMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = VerifySnapshot(bytes.NewReader(b))
		_, _ = ReadSnapshotHeader(bytes.NewReader(b))
	})
}
