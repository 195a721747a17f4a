package seal

import (
	"crypto/sha256"
	"encoding"
	"hash"
	"sync"
)

// macState is HMAC-SHA256 (RFC 2104) under one fixed key with the key's
// inner and outer pads already absorbed: inner and outer are the
// marshalled SHA-256 states after hashing key^ipad and key^opad. A MAC
// then restores a pooled digest from them instead of building a new
// crypto/hmac instance (five allocations) for every message.
//
// The states are as secret as the key itself.
type macState struct {
	inner, outer []byte
}

// newMACState precomputes the pads for key (at most one SHA-256 block).
func newMACState(key []byte) macState {
	var pad [sha256.BlockSize]byte
	defer clear(pad[:])
	copy(pad[:], key)
	for i := range pad {
		pad[i] ^= 0x36
	}
	s := getScratch()
	defer putScratch(s)
	s.h.Write(pad[:])
	inner, err := s.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic("seal: sha256 state cannot be marshalled: " + err.Error())
	}
	for i := range pad {
		pad[i] ^= 0x36 ^ 0x5c
	}
	s.h.Reset()
	s.h.Write(pad[:])
	outer, err := s.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic("seal: sha256 state cannot be marshalled: " + err.Error())
	}
	return macState{inner: inner, outer: outer}
}

// sum appends HMAC(key, msg) to dst.
func (st *macState) sum(dst, msg []byte) []byte {
	s := getScratch()
	defer putScratch(s)
	return append(dst, st.sumInto(s, msg)...)
}

// sumInto computes HMAC(key, msg) into s.out and returns it. The result
// is valid until s is put back.
func (st *macState) sumInto(s *scratch, msg []byte) []byte {
	s.restore(st.inner)
	s.h.Write(msg)
	inner := s.h.Sum(s.out[:0])
	s.restore(st.outer)
	s.h.Write(inner)
	return s.h.Sum(s.out[:0])
}

func (st *macState) zero() {
	clear(st.inner)
	clear(st.outer)
}

// scratch is a reusable SHA-256 digest plus an output buffer. It lives on
// the heap in a pool, so passing its buffer through the hash.Hash
// interface allocates nothing.
type scratch struct {
	h   hash.Hash
	u   encoding.BinaryUnmarshaler
	out [sha256.Size]byte
}

func (s *scratch) restore(state []byte) {
	if err := s.u.UnmarshalBinary(state); err != nil {
		// The states come from the same package's MarshalBinary.
		panic("seal: sha256 state cannot be restored: " + err.Error())
	}
}

var scratchPool = sync.Pool{New: func() any {
	h := sha256.New()
	return &scratch{h: h, u: h.(encoding.BinaryUnmarshaler)}
}}

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

// putScratch wipes what s holds that derives from a key (the output and
// the digest's chaining value) and returns it to the pool.
func putScratch(s *scratch) {
	clear(s.out[:])
	s.h.Reset()
	scratchPool.Put(s)
}
