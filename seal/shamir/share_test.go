package shamir

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors-v1.json")

const goldenPath = "testdata/vectors-v1.json"

// vector freezes the share text format and the split itself: the shares
// of secret under the given coefficient stream (read in order: for each
// secret byte, M-1 coefficients of x, x², ...).
type vector struct {
	Group        string   `json:"group"`
	N            int      `json:"n"`
	M            int      `json:"m"`
	Secret       string   `json:"secret"`       // hex
	Coefficients string   `json:"coefficients"` // hex
	Shares       []string `json:"shares"`
}

func goldenInputs() []vector {
	seq := func(start byte, n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = start + byte(i*37)
		}
		return hex.EncodeToString(b)
	}
	return []vector{
		{Group: "0123abcd", N: 5, M: 3, Secret: seq(1, 32), Coefficients: seq(200, 64)},
		{Group: "ff", N: 2, M: 2, Secret: "00", Coefficients: "01"},
		{Group: "9e3779b97f4a7c15f39cc0605cedc834", N: 4, M: 4, Secret: seq(99, 16), Coefficients: seq(7, 48)},
	}
}

func TestGoldenVectors(t *testing.T) {
	var want []vector
	if !*update {
		b, err := os.ReadFile(goldenPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
	}
	var got []vector
	for _, v := range goldenInputs() {
		secret, _ := hex.DecodeString(v.Secret)
		coef, _ := hex.DecodeString(v.Coefficients)
		shares, err := split(bytes.NewReader(coef), v.Group, secret, v.N, v.M)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range shares {
			text, err := s.AppendSecret(nil)
			if err != nil {
				t.Fatal(err)
			}
			v.Shares = append(v.Shares, string(text))
		}
		got = append(got, v)
	}
	if *update {
		b, _ := json.MarshalIndent(got, "", "  ")
		if err := os.WriteFile(goldenPath, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if len(got) != len(want) {
		t.Fatalf("%d vectors, %s has %d", len(got), goldenPath, len(want))
	}
	for i := range want {
		w, g := want[i], got[i]
		if w.Group != g.Group || w.N != g.N || w.M != g.M || w.Secret != g.Secret || w.Coefficients != g.Coefficients {
			t.Fatalf("vector %d: inputs differ from %s", i, goldenPath)
		}
		for j := range w.Shares {
			if j >= len(g.Shares) || w.Shares[j] != g.Shares[j] {
				t.Errorf("vector %d share %d: got %q, frozen %q", i, j, g.Shares[j], w.Shares[j])
			}
		}
		// And the frozen texts parse and combine back to the secret.
		var parsed []*Share
		for _, text := range w.Shares {
			s, err := ParseShare([]byte(text))
			if err != nil {
				t.Fatalf("vector %d: ParseShare: %v", i, err)
			}
			parsed = append(parsed, s)
		}
		secret, err := Combine(parsed[len(parsed)-w.M:])
		if err != nil || hex.EncodeToString(secret) != w.Secret {
			t.Errorf("vector %d: Combine of the last %d frozen shares = %x, %v; want %s", i, w.M, secret, err, w.Secret)
		}
	}
}

func TestShareTextRoundTrip(t *testing.T) {
	shares, err := Split("deadbeef", bytes.Repeat([]byte{0xa5}, 32), 255, 200)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Share{shares[0], shares[9], shares[99], shares[254]} {
		text, err := s.AppendSecret([]byte("prefix:"))
		if err != nil {
			t.Fatal(err)
		}
		text = text[len("prefix:"):]
		for _, variant := range [][]byte{text, bytes.ToUpper(text), append(append([]byte(" \t"), text...), "\r\n"...)} {
			p, err := ParseShare(variant)
			if err != nil {
				t.Fatalf("ParseShare(%s): %v", s, err)
			}
			if p.Group() != s.Group() || p.Threshold() != s.Threshold() || p.X() != s.X() || !bytes.Equal(p.y, s.y) {
				t.Fatalf("round trip of %s gave %s", s, p)
			}
		}
	}
}

func TestParseShareErrors(t *testing.T) {
	shares, _ := Split("0123abcd", bytes.Repeat([]byte{1}, 32), 3, 2)
	good, _ := shares[1].AppendSecret(nil)
	goodS := string(good)
	cut := strings.LastIndexByte(goodS, '-')
	body := goodS[:cut]
	// withCheck re-computes the checksum: the text is well-formed except
	// for what the test changed.
	withCheck := func(body string) string { return body + "-" + checksum(body) }
	fields := strings.Split(body, "-") // kmsd share v1 group m x y
	join := func(f []string) string { return strings.Join(f, "-") }
	replace := func(i int, v string) string {
		f := append([]string(nil), fields...)
		f[i] = v
		return withCheck(join(f))
	}
	if withCheck(body) != goodS {
		t.Fatalf("test helper disagrees with AppendSecret: %s", withCheck(body))
	}
	for i, tc := range []struct {
		text string
		want error
	}{
		{"", ErrFormat},
		{"hello", ErrFormat},
		{"kmsd-share-v2-" + goodS[len(textPrefix):], ErrFormat},
		{body, ErrFormat},               // no checksum
		{body + "-0000000", ErrFormat},  // short checksum
		{body + "-zzzzzzzz", ErrFormat}, // not hex
		{goodS[:len(goodS)-1] + flip(goodS[len(goodS)-1]), ErrChecksum},
		{goodS[:30] + flip(goodS[30]) + goodS[31:], ErrChecksum}, // a typo in the value
		{goodS[:20] + flip(goodS[20]) + goodS[21:], ErrChecksum}, // a typo in the group
		{strings.Replace(goodS, "-2-", "-3-", 1), ErrChecksum},   // another threshold
		{replace(3, ""), ErrFormat},
		{replace(3, "xyz"), ErrFormat},
		{replace(4, "1"), ErrFormat},
		{replace(4, "02"), ErrFormat},
		{replace(4, "256"), ErrFormat},
		{replace(5, "0"), ErrFormat},
		{replace(5, "+1"), ErrFormat},
		{replace(6, ""), ErrFormat},
		{replace(6, "0189"), ErrFormat},             // not base32
		{replace(6, fields[6][:51]+"b"), ErrFormat}, // non-canonical tail bits
		{withCheck(body + "-extra"), ErrFormat},
		{strings.Repeat("a", maxText+1), ErrFormat},
		// A valid checksum over less than the prefix: the last '-' is
		// the prefix's own (must not slice out of range).
		{withCheck(strings.TrimSuffix(textPrefix, "-")), ErrFormat},
		{" " + withCheck(strings.TrimSuffix(textPrefix, "-")) + "\n", ErrFormat},
		{withCheck(textPrefix), ErrFormat}, // empty fields after the prefix
	} {
		s, err := ParseShare([]byte(tc.text))
		if !errors.Is(err, tc.want) || s != nil {
			t.Errorf("Test %d: ParseShare = %v, %v; want %v", i, s, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), fields[6][:10]) {
			t.Errorf("Test %d: the error quotes the share's value: %v", i, err)
		}
	}
}

// flip changes one character of a share text into another valid one.
func flip(c byte) string {
	if c == 'a' {
		return "b"
	}
	return "a"
}

// checksum is the format's checksum, computed independently of share.go.
func checksum(body string) string {
	h := sha256.Sum256([]byte(body))
	return hex.EncodeToString(h[:4])
}

// TestShareNotPrinted: fmt verbs and slog show group, M and x only.
func TestShareNotPrinted(t *testing.T) {
	shares, _ := Split("c0ffee", bytes.Repeat([]byte{0x5a}, 32), 3, 2)
	s := shares[0]
	text, _ := s.AppendSecret(nil)
	value := strings.Split(string(text), "-")[6]
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("share", "share", s, "shares", shares)
	slog.New(slog.NewTextHandler(&logged, nil)).Info("share", "share", s)
	for _, out := range []string{
		fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %q %x %X", s, s, s, s, s, s, s), fmt.Sprintf("%v", shares), logged.String(),
	} {
		if strings.Contains(out, value) || strings.Contains(out, "5a5a") || strings.Contains(strings.ToLower(out), hex.EncodeToString(s.y[:4])) {
			t.Errorf("share value in output: %s", out)
		}
		if !strings.Contains(out, "c0ffee") {
			t.Errorf("output lacks the group: %s", out)
		}
	}
	s.Destroy()
	if s.y != nil {
		t.Fatal("Destroy left the value")
	}
	if _, err := s.AppendSecret(nil); !errors.Is(err, ErrDestroyed) {
		t.Errorf("AppendSecret after Destroy: %v", err)
	}
}
