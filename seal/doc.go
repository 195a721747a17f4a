// Package seal protects key material, from the root of trust up
// (design.md §2):
//
//	Sealer (HSM key, or Software in dev/tests)
//	  └─ wraps ─► REK, the cluster root encryption key      Init, Unseal, Stanza
//	                └─ seals ─► master-key material          Keyring.SealKey, Keyring.OpenKey
//	                              └─ encrypts ─► data keys   Key.Encrypt, Key.Decrypt, Key.GenerateDEK
//
// A Sealer is used only at init, unseal and when a node joins or the REK
// is re-wrapped; never on the request path. Init makes a new REK and a
// Stanza (the REK wrapped by one sealer key); Unseal turns a Stanza back
// into a Keyring and refuses a REK that does not match the stanza's REKID
// (ErrREKMismatch) or a stanza made for another sealer key
// (ErrStanzaMismatch, the normal "not mine" outcome).
//
// A joining node gets the REK from a member without any HSM in common:
// it makes an ephemeral X25519 HandoverKey, the member seals the REK for
// its public key (Keyring.Handover), and HandoverKey.Open checks the
// result against the cluster's REK id before returning a Keyring.
//
// Break-glass: Keyring.SplitRecovery splits the REK into M-of-N recovery
// shares (package seal/shamir) that `kmsd init` prints once, and
// RecoverKeyring combines shares back into a Keyring only if the result
// has the REK id the caller expects (ErrRecoveryShares otherwise), so a
// snapshot stays recoverable when every HSM key is lost.
//
// A Keyring seals master-key material with AES-256-GCM under a key
// derived from the REK. The associated data binds the key name and
// version, so a sealed blob cannot be moved to another key or version.
// Sealing happens on the node that proposes a command; the replicated
// state machine only stores sealed bytes and never calls this package.
//
// A Key is unsealed master-key material. Its Encrypt, Decrypt, GenerateDEK
// and HMAC implement the KES ciphertext format and HMAC bit for bit
// (spec/kes-api.md §6), including the legacy JSON and MessagePack
// ciphertexts of older KES versions, so that data encrypted by KES and by
// kmsd decrypt on either. Cache keeps unsealed keys per node with KES's
// cache.expiry semantics.
//
// Every stored encoding (Stanza, the sealed key blob, the material inside
// it) starts with a version byte and is frozen by golden vectors in
// testdata/. Changing one means adding a new version and keeping the
// reader of the old one.
//
// Key material is never printed or logged: Key, Keyring and Software
// implement fmt.Formatter (and Key and Keyring slog.LogValuer) to show
// only the algorithm or the public REK fingerprint.
//
// Errors are sentinels compared with errors.Is. ErrDecrypt means "not
// authentic" (the caller's mistake, 400 in the API); ErrSealed means this
// node cannot serve (503).
package seal
