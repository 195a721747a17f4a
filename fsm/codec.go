package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// ErrMalformed is returned (wrapped) when bytes do not decode.
var ErrMalformed = errors.New("fsm: malformed encoding")

// enc appends the primitive encodings shared by commands, records and
// snapshots. Variable-length fields are a uvarint length then the bytes.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)         { e.b = append(e.b, v) }
func (e *enc) uvarint(v uint64)   { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) varint(v int64)     { e.b = binary.AppendVarint(e.b, v) }
func (e *enc) bytes(p []byte)     { e.uvarint(uint64(len(p))); e.b = append(e.b, p...) }
func (e *enc) str(s string)       { e.uvarint(uint64(len(s))); e.b = append(e.b, s...) }
func (e *enc) fixed16(p [16]byte) { e.b = append(e.b, p[:]...) }

func (e *enc) boolean(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

// timestamp encodes t as varint Unix seconds and uvarint nanoseconds, so
// every time.Time (including the zero value) round-trips in UTC.
func (e *enc) timestamp(t time.Time) {
	e.varint(t.Unix())
	e.uvarint(uint64(t.Nanosecond()))
}

// dec reads what enc wrote. The first error sticks; every read after it
// returns zero values, so callers check d.err once at the end. dec never
// panics and never allocates more than the input holds.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrMalformed, what)
	}
}

func (d *dec) u8() uint8 {
	if d.err != nil || len(d.b) < 1 {
		d.fail("short input")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *dec) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || n != uvarintLen(v) {
		d.fail("bad or non-canonical uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 || n != varintLen(v) {
		d.fail("bad or non-canonical varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// raw returns the next length-prefixed field without copying.
func (d *dec) raw() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length exceeds input")
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

// bytes returns a copy of the next length-prefixed field (nil if empty).
func (d *dec) bytes() []byte {
	p := d.raw()
	if len(p) == 0 {
		return nil
	}
	return append([]byte(nil), p...)
}

func (d *dec) str() string { return string(d.raw()) }

func (d *dec) fixed16() (v [16]byte) {
	if d.err != nil || len(d.b) < 16 {
		d.fail("short input")
		return v
	}
	copy(v[:], d.b)
	d.b = d.b[16:]
	return v
}

func (d *dec) boolean() bool {
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail("bad bool")
	return false
}

func (d *dec) timestamp() time.Time {
	sec := d.varint()
	nsec := d.uvarint()
	if d.err != nil {
		return time.Time{}
	}
	if nsec >= 1e9 {
		d.fail("bad timestamp")
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// version reads a format version byte and fails unless it is want.
func (d *dec) version(want uint8) {
	if v := d.u8(); d.err == nil && v != want {
		d.err = fmt.Errorf("%w: format version %d, this build knows %d", ErrMalformed, v, want)
	}
}

// finish fails on trailing bytes and returns the sticky error. Trailing
// bytes are an error, not ignored: a field added by a newer version must
// bump the version, or replicas would silently drop it and diverge.
func (d *dec) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	return d.err
}

// Canonical (shortest) encodings only: every value has exactly one
// encoding, so decode(encode(x)) and encode(decode(b)) are both identities.
func uvarintLen(v uint64) int { return len(binary.AppendUvarint(nil, v)) }
func varintLen(v int64) int   { return len(binary.AppendVarint(nil, v)) }
