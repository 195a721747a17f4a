package shamir

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"strconv"
)

// Share is one share of a split secret: the point (x, y) of the secret's
// polynomials, the threshold M of the split and its group label. Only y is
// secret. String, Format and LogValue show group, M and x, never y; the
// text form (AppendSecret) is for the operator's eyes only.
type Share struct {
	group     string
	threshold int
	x         byte
	y         []byte // nil after Destroy
}

// Group is the split's group label (kmsd: a REK id prefix).
func (s *Share) Group() string { return s.group }

// Threshold is M: how many shares of this split Combine needs.
func (s *Share) Threshold() int { return s.threshold }

// X is the share's number, 1 to 255.
func (s *Share) X() int { return int(s.x) }

// Destroy zeroes the share's secret part. Combine and AppendSecret refuse a
// destroyed share.
func (s *Share) Destroy() {
	if s != nil {
		clear(s.y)
		s.y = nil
	}
}

// String returns "shamir.Share(GROUP, M=3, x=2)": never the secret part.
func (s *Share) String() string {
	if s == nil {
		return "shamir.Share(nil)"
	}
	return fmt.Sprintf("shamir.Share(%s, M=%d, x=%d)", s.group, s.threshold, s.x)
}

// Format implements fmt.Formatter: every verb, %#v included, prints String.
func (s *Share) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }

// LogValue implements slog.LogValuer: group, threshold and x only.
func (s *Share) LogValue() slog.Value {
	if s == nil {
		return slog.StringValue("nil")
	}
	return slog.GroupValue(slog.String("group", s.group), slog.Int("threshold", s.threshold), slog.Int("x", int(s.x)))
}

// Share text, version 1 (frozen by testdata/vectors-v1.json):
//
//	kmsd-share-v1-<group>-<m>-<x>-<y>-<check>
//
// group = 1 to 64 lowercase hex digits; m, x = decimal without leading
// zeros (2 <= m <= 255, 1 <= x <= 255); y = lowercase base32 (RFC 4648)
// without padding; check = lowercase hex of the first 4 bytes of
// SHA-256 of everything before the last '-'. ParseShare accepts upper case
// and surrounding white space.
const (
	textPrefix = "kmsd-share-v1-"
	checkLen   = 4 // bytes of SHA-256
	// maxText bounds a share text: prefix, group, m, x, y, check, dashes.
	maxText = len(textPrefix) + maxGroup + 3 + 3 + (MaxSecretSize*8+4)/5 + 2*checkLen + 4
)

var b32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// AppendSecret appends the share's text form (see the format above) to dst.
// It is the secret: print it for the operator, never log or store it, and
// clear the buffer after use.
func (s *Share) AppendSecret(dst []byte) ([]byte, error) {
	if s == nil || s.y == nil {
		return dst, ErrDestroyed
	}
	start := len(dst)
	dst = append(dst, textPrefix...)
	dst = append(dst, s.group...)
	dst = append(dst, '-')
	dst = strconv.AppendInt(dst, int64(s.threshold), 10)
	dst = append(dst, '-')
	dst = strconv.AppendInt(dst, int64(s.x), 10)
	dst = append(dst, '-')
	dst = b32.AppendEncode(dst, s.y)
	sum := sha256.Sum256(dst[start:])
	dst = append(dst, '-')
	return hex.AppendEncode(dst, sum[:checkLen]), nil
}

// ParseShare parses a share text. It returns ErrChecksum for a text whose
// checksum does not match (a typo) and ErrFormat for anything else that is
// wrong; the error never quotes the share. The caller should clear text.
func ParseShare(text []byte) (*Share, error) {
	text = bytes.TrimSpace(text)
	if len(text) > maxText {
		return nil, fmt.Errorf("%w: %d characters, at most %d", ErrFormat, len(text), maxText)
	}
	buf := bytes.ToLower(text)
	defer clear(buf)
	if !bytes.HasPrefix(buf, []byte(textPrefix)) {
		if bytes.HasPrefix(buf, []byte("kmsd-share-")) {
			return nil, fmt.Errorf("%w: unknown version (this build reads %q)", ErrFormat, textPrefix)
		}
		return nil, fmt.Errorf("%w: does not start with %q", ErrFormat, textPrefix)
	}
	cut := bytes.LastIndexByte(buf, '-')
	if cut < len(textPrefix) { // the prefix's own '-': no checksum field
		return nil, fmt.Errorf("%w: want group-m-x-value-checksum after the prefix", ErrFormat)
	}
	body, check := buf[:cut], buf[cut+1:]
	want := sha256.Sum256(body)
	got, err := hex.DecodeString(string(check))
	if err != nil || len(got) != checkLen {
		return nil, fmt.Errorf("%w: checksum is not %d hex digits", ErrFormat, 2*checkLen)
	}
	if !bytes.Equal(got, want[:checkLen]) {
		return nil, ErrChecksum
	}
	f := bytes.Split(body[len(textPrefix):], []byte("-"))
	if len(f) != 4 {
		return nil, fmt.Errorf("%w: want group-m-x-value-checksum after the prefix", ErrFormat)
	}
	s := &Share{group: string(f[0])}
	if !validGroup(s.group) {
		return nil, fmt.Errorf("%w: group is not 1 to %d hex digits", ErrFormat, maxGroup)
	}
	m, ok := parseSmall(f[1])
	if !ok || m < 2 {
		return nil, fmt.Errorf("%w: threshold is not a number from 2 to %d", ErrFormat, MaxShares)
	}
	x, ok := parseSmall(f[2])
	if !ok || x < 1 {
		return nil, fmt.Errorf("%w: share number is not a number from 1 to %d", ErrFormat, MaxShares)
	}
	s.threshold, s.x = m, byte(x)
	if len(f[3]) == 0 || len(f[3]) > b32.EncodedLen(MaxSecretSize) {
		return nil, fmt.Errorf("%w: value of %d characters", ErrFormat, len(f[3]))
	}
	y := make([]byte, b32.DecodedLen(len(f[3])))
	n, err := b32.Decode(y, f[3])
	if err != nil || n == 0 {
		clear(y)
		return nil, fmt.Errorf("%w: value is not base32", ErrFormat)
	}
	s.y = y[:n]
	// Canonical form only: a non-canonical base32 tail would give one
	// share two texts.
	again, _ := s.AppendSecret(nil)
	canonical := bytes.Equal(again, buf)
	clear(again)
	if !canonical {
		s.Destroy()
		return nil, fmt.Errorf("%w: not in canonical form", ErrFormat)
	}
	return s, nil
}

// parseSmall parses a decimal 0..255 without sign or leading zeros.
func parseSmall(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 3 || (len(b) > 1 && b[0] == '0') {
		return 0, false
	}
	v := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	return v, v <= MaxShares
}
