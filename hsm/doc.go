// Package hsm wraps small secrets under an AES-256 key that never leaves a
// PKCS#11 token (an HSM, or SoftHSM2 in development and CI).
//
// kmsd uses it for one thing: wrapping and unwrapping the cluster's root
// encryption key (REK) at init, unseal, node join and re-wrap. It is never
// on the request path. *Module satisfies seal.Sealer structurally; this
// package imports nothing of kmsd.
//
// # Use
//
//	pin, err := hsm.ReadPIN("KMSD_HSM_PIN", "/etc/kmsd/hsm.pin")
//	m, err := hsm.Open(ctx, hsm.Config{
//		ModulePath: "/usr/lib/softhsm/libsofthsm2.so",
//		TokenLabel: "kmsd-node1",
//		PIN:        pin,
//		KeyLabel:   "kmsd-wrapping-key",
//	})
//	defer m.Close()
//	wrapped, err := m.Wrap(ctx, rek, aad)
//	rek, err = m.Unwrap(ctx, wrapped, aad) // errors.Is(err, hsm.ErrNotAuthentic) if not ours
//
// GenerateKey creates a suitable key (AES-256, token, private, sensitive,
// non-extractable, encrypt/decrypt only); scripts/softhsm-init.sh creates a
// development token with one.
//
// # Format
//
// Wrap uses CKM_AES_GCM through C_EncryptInit/C_Encrypt with a 12-byte IV
// and a 128-bit tag and returns iv || ciphertext || tag. Unwrap accepts
// exactly that. The format is plain AES-GCM, so it is also what any other
// implementation holding the key would produce.
//
// # Sessions and concurrency
//
// A Module is safe for concurrent use. It logs in once (CKU_USER) and keeps
// a bounded pool of sessions, opened lazily up to Config.MaxSessions and
// never more than the token allows; each session is used by one goroutine
// at a time. Operations wait for a free session or for their context.
//
// Several Modules on the same module path share one C_Initialize (reference
// counted); C_Finalize runs when the last one closes, and only if this
// package did the C_Initialize.
//
// # Errors
//
// Errors read "hsm: <op>: <detail>", never contain a PIN or plaintext,
// wrap the underlying pkcs11.Error when there is one and wrap a sentinel
// (ErrModuleNotFound, ErrTokenNotFound, ErrPINIncorrect, ErrPINLocked,
// ErrKeyNotFound, ErrKeyExists, ErrNotAuthentic, ErrClosed) when it
// applies. ErrNotAuthentic is the normal outcome of unwrapping something
// wrapped by another key; every other Unwrap error is an HSM failure.
//
// See DESIGN.md for the invariants and the SoftHSM findings behind them.
package hsm
