package shamir

// Arithmetic in GF(2^8) with the AES reduction polynomial
// x^8 + x^4 + x^3 + x + 1 (0x11b). Addition and subtraction are XOR.
//
// Multiplication is a fixed eight-round shift-and-add loop with masks
// instead of branches, and inversion a fixed square-and-multiply chain
// (a^254), so neither the running time nor the memory accessed depends
// on the (secret) operands: no log/exp tables.

// mul returns a·b in GF(2^8).
func mul(a, b byte) byte {
	var p byte
	for range 8 {
		p ^= -(b & 1) & a  // add a when the low bit of b is set
		hi := -(a >> 7)    // 0xff when a's top bit is set
		a = a<<1 ^ hi&0x1b // a·x, reduced
		b >>= 1
	}
	return p
}

// inv returns a⁻¹ = a^254 in GF(2^8) (and 0 for 0, which callers never
// pass: x coordinates are distinct and non-zero).
func inv(a byte) byte {
	// 254 = 0b11111110: a^2 · a^4 · ... · a^128.
	sq := mul(a, a) // a^2
	r := sq
	for range 6 {
		sq = mul(sq, sq) // a^4 ... a^128
		r = mul(r, sq)
	}
	return r
}

// div returns a/b in GF(2^8); b must not be 0.
func div(a, b byte) byte { return mul(a, inv(b)) }
