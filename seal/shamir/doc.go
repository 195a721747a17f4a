// Package shamir is Shamir secret sharing over GF(2^8), for kmsd's
// break-glass recovery shares of the cluster root key (design.md §2).
//
// Split turns a secret into N shares of which any M recover it (Combine)
// and any M-1 reveal nothing: each secret byte is the constant term of a
// random polynomial of degree M-1 over GF(2^8), and share x holds the
// polynomials' values at x. 2 <= M <= N <= 255.
//
// A Share carries a group label (kmsd: the first hex digits of the REK id,
// so a share names the cluster it belongs to), the threshold M (so
// Combine knows when it has enough) and its number x. Its text form, for
// operators to write down or paste,
//
//	kmsd-share-v1-<group>-<m>-<x>-<base32 value>-<checksum>
//
// ends in a checksum that catches typos (ErrChecksum) before anything is
// combined. Combine refuses too few shares, a duplicate x and shares of
// different splits; it cannot tell a wrong share of the right shape, so
// the caller verifies the result (kmsd compares the recovered REK's id).
//
// Field arithmetic uses no tables: multiplication is a fixed shift-and-add
// loop with masks, inversion a fixed exponentiation, so timing and memory
// access do not depend on secret values. A Share prints and logs (String,
// Format, LogValue) without its value; Destroy zeroes it.
package shamir
