package shamir

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"math/bits"
	"testing"
)

// slowMul is carry-less multiplication followed by reduction modulo
// 0x11b: an independent definition of GF(2^8) multiplication.
func slowMul(a, b byte) byte {
	var p uint16
	for i := range 8 {
		if b>>i&1 == 1 {
			p ^= uint16(a) << i
		}
	}
	for i := 15; i >= 8; i-- {
		if p>>i&1 == 1 {
			p ^= 0x11b << (i - 8)
		}
	}
	return byte(p)
}

func TestMul(t *testing.T) {
	// FIPS-197 §4.2 and §4.2.1 examples.
	for _, tc := range []struct{ a, b, want byte }{
		{0x57, 0x83, 0xc1},
		{0x57, 0x13, 0xfe},
		{0x57, 0x02, 0xae},
		{0x57, 0x04, 0x47},
		{0x57, 0x08, 0x8e},
		{0x57, 0x10, 0x07},
		{0x00, 0xff, 0x00},
		{0x01, 0xa5, 0xa5},
	} {
		if got := mul(tc.a, tc.b); got != tc.want {
			t.Errorf("mul(%#02x, %#02x) = %#02x, want %#02x", tc.a, tc.b, got, tc.want)
		}
	}
	for a := range 256 {
		for b := range 256 {
			if got, want := mul(byte(a), byte(b)), slowMul(byte(a), byte(b)); got != want {
				t.Fatalf("mul(%#02x, %#02x) = %#02x, carry-less reference %#02x", a, b, got, want)
			}
		}
	}
}

func TestInv(t *testing.T) {
	if got := inv(0x53); got != 0xca { // the AES S-box example
		t.Errorf("inv(0x53) = %#02x, want 0xca", got)
	}
	for a := 1; a < 256; a++ {
		if p := mul(byte(a), inv(byte(a))); p != 1 {
			t.Fatalf("%#02x · inv = %#02x, want 1", a, p)
		}
	}
}

// subsets calls f with every subset of {0..n-1} (as a bit mask).
func subsets(n int, f func(mask uint)) {
	for mask := uint(0); mask < 1<<n; mask++ {
		f(mask)
	}
}

func pick(shares []*Share, mask uint) []*Share {
	var out []*Share
	for i, s := range shares {
		if mask>>i&1 == 1 {
			out = append(out, s)
		}
	}
	return out
}

var splitTests = []struct {
	n, m, size int
}{
	{2, 2, 32}, {3, 2, 32}, {3, 3, 32}, {4, 2, 16}, {5, 3, 32}, {6, 4, 32}, {7, 7, 1}, {8, 5, 33},
}

// TestSplitCombineSubsets: for small N every subset of M or more shares
// recovers the secret; every subset of fewer is refused by Combine, and
// interpolating it anyway gives something else.
func TestSplitCombineSubsets(t *testing.T) {
	for i, tc := range splitTests {
		secret := make([]byte, tc.size)
		rand.Read(secret)
		shares, err := Split("abcd", secret, tc.n, tc.m)
		if err != nil {
			t.Fatalf("Test %d: Split(%d, %d): %v", i, tc.n, tc.m, err)
		}
		if len(shares) != tc.n {
			t.Fatalf("Test %d: %d shares, want %d", i, len(shares), tc.n)
		}
		ok, refused := 0, 0
		subsets(tc.n, func(mask uint) {
			sub := pick(shares, mask)
			k := bits.OnesCount(mask)
			got, err := Combine(sub)
			switch {
			case k >= tc.m:
				if err != nil || !bytes.Equal(got, secret) {
					t.Errorf("Test %d: %d-of-%d, subset %b: Combine = %x, %v; want the secret", i, tc.m, tc.n, mask, got, err)
				}
				ok++
			default:
				if !errors.Is(err, ErrTooFewShares) {
					t.Errorf("Test %d: subset %b of %d shares: err %v, want ErrTooFewShares", i, mask, k, err)
				}
				refused++
				if k == tc.m-1 && k > 0 && tc.size >= 16 {
					if bytes.Equal(interpolate(sub), secret) {
						t.Errorf("Test %d: %d shares interpolate to the secret", i, k)
					}
				}
			}
		})
		t.Logf("%d-of-%d, %d-byte secret: %d subsets recover it, %d refused", tc.m, tc.n, tc.size, ok, refused)
	}
}

// TestThresholdOneLess: with M-1 shares every candidate secret is
// equally possible, so M-1 shares of two different secrets can be
// identical. Shown for one byte: for any target value there is a
// polynomial through the M-1 points with that constant term.
func TestThresholdOneLess(t *testing.T) {
	shares, err := Split("ab", []byte{0x42}, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	p1, p2 := shares[0], shares[1]
	for target := range 256 {
		third := &Share{group: "ab", threshold: 3, x: 3, y: []byte{0}}
		// Lagrange at 0 with points (1,y1), (2,y2), (3,?) is linear in
		// the third value: solve for the one that gives target.
		base := interpolate([]*Share{p1, p2, third})[0]
		third.y[0] = 1
		unit := interpolate([]*Share{p1, p2, third})[0] ^ base
		third.y[0] = div(byte(target)^base, unit)
		if got := interpolate([]*Share{p1, p2, third})[0]; got != byte(target) {
			t.Fatalf("no polynomial through the two shares gives %#02x (got %#02x)", target, got)
		}
	}
}

func TestSplitParams(t *testing.T) {
	for i, tc := range []struct {
		group  string
		size   int
		n, m   int
		wantOK bool
	}{
		{"ab", 32, 5, 3, true},
		{"ab", 32, 255, 2, true},
		{"ab", 32, 255, 255, true},
		{"ab", 1, 2, 2, true},
		{"ab", MaxSecretSize, 2, 2, true},
		{"ab", 32, 5, 1, false},
		{"ab", 32, 5, 0, false},
		{"ab", 32, 2, 3, false},
		{"ab", 32, 256, 3, false},
		{"ab", 0, 3, 2, false},
		{"ab", MaxSecretSize + 1, 3, 2, false},
		{"", 32, 3, 2, false},
		{"AB", 32, 3, 2, false},
		{"a-b", 32, 3, 2, false},
		{string(bytes.Repeat([]byte("a"), 65)), 32, 3, 2, false},
	} {
		_, err := Split(tc.group, make([]byte, tc.size), tc.n, tc.m)
		if tc.wantOK != (err == nil) {
			t.Errorf("Test %d: Split(%q, %d bytes, %d, %d): %v", i, tc.group, tc.size, tc.n, tc.m, err)
		}
		if err != nil && !errors.Is(err, ErrParams) {
			t.Errorf("Test %d: %v is not ErrParams", i, err)
		}
	}
}

func TestCombineErrors(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	a, _ := Split("aa", secret, 5, 3)
	b, _ := Split("bb", secret, 5, 3)
	c, _ := Split("aa", secret, 5, 2)
	d, _ := Split("aa", secret[:16], 5, 3)
	dup := &Share{group: "aa", threshold: 3, x: a[0].x, y: bytes.Clone(a[0].y)}
	destroyed := &Share{group: "aa", threshold: 3, x: 9, y: []byte{1}}
	destroyed.Destroy()
	for i, tc := range []struct {
		shares []*Share
		want   error
	}{
		{nil, ErrTooFewShares},
		{a[:2], ErrTooFewShares},
		{[]*Share{a[0], a[1], dup}, ErrDuplicateShare},
		{[]*Share{a[0], a[1], a[0]}, ErrDuplicateShare},
		{[]*Share{a[0], a[1], b[2]}, ErrMismatch},
		{[]*Share{a[0], a[1], c[2]}, ErrMismatch},
		{[]*Share{a[0], a[1], d[2]}, ErrMismatch},
		{[]*Share{a[0], a[1], destroyed}, ErrDestroyed},
		{[]*Share{a[0], nil, a[2]}, ErrDestroyed},
	} {
		got, err := Combine(tc.shares)
		if !errors.Is(err, tc.want) || got != nil {
			t.Errorf("Test %d: Combine = %x, %v; want %v", i, got, err, tc.want)
		}
	}
	// A share of another split of the same secret has the right shape:
	// Combine cannot tell, the result is wrong (the caller verifies it).
	other, _ := Split("aa", secret, 5, 3)
	got, err := Combine([]*Share{a[0], a[1], other[2]})
	if err != nil || bytes.Equal(got, secret) {
		t.Errorf("mixed splits: Combine = %x, %v; want a wrong secret without error", got, err)
	}
}

// TestSplitReaderError: a failing randomness source fails Split.
func TestSplitReaderError(t *testing.T) {
	_, err := split(bytes.NewReader(make([]byte, 3)), "ab", make([]byte, 32), 3, 2)
	if err == nil {
		t.Fatal("split with a short coefficient stream succeeded")
	}
}

func BenchmarkSplit32(b *testing.B) {
	secret := make([]byte, 32)
	for b.Loop() {
		s, _ := Split("ab", secret, 5, 3)
		for _, x := range s {
			x.Destroy()
		}
	}
}

func BenchmarkCombine32(b *testing.B) {
	s, _ := Split("ab", make([]byte, 32), 5, 3)
	for b.Loop() {
		out, _ := Combine(s[:3])
		clear(out)
	}
}

func ExampleSplit() {
	shares, _ := Split("c0ffee", []byte("a 32-byte root encryption key..."), 5, 3)
	fmt.Println(len(shares), shares[0])
	secret, _ := Combine([]*Share{shares[4], shares[0], shares[2]})
	fmt.Printf("%s\n", secret)
	// Output:
	// 5 shamir.Share(c0ffee, M=3, x=1)
	// a 32-byte root encryption key...
}
