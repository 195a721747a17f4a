// Package softhsmtest creates throw-away SoftHSM2 tokens, each holding an
// AES-256 wrapping key, for tests of any kmsd package.
//
//	tok := softhsmtest.New(t, "node1")
//	m, err := hsm.Open(ctx, tok.Config())   // or tok.Open(t)
//	cmd.Env = append(os.Environ(), tok.Env()...) // for a child kmsd process
//
// New skips the test when SoftHSM2 is not installed, unless the
// environment has KMSD_REQUIRE_SOFTHSM=1 (CI), in which case it fails.
// The module is looked up at KMSD_SOFTHSM_MODULE if set, else at the usual
// install paths (Debian: /usr/lib/softhsm/libsofthsm2.so).
//
// # SOFTHSM2_CONF and what SoftHSM 2.6 does with it
//
// SoftHSM reads SOFTHSM2_CONF once, at C_Initialize, and scans its token
// directory only then: a token created by another process (softhsm2-util)
// after this process's C_Initialize stays invisible to it until C_Finalize
// and C_Initialize (verified with softhsm2 2.6.1). Objects added by
// another process to a token this process already sees are visible.
//
// So the package works per process:
//
//   - On first use it creates one directory (os.MkdirTemp, "kmsd-softhsm-*")
//     with softhsm2.conf and tokens/, sets SOFTHSM2_CONF for the whole
//     process with os.Setenv, and calls C_Initialize on its own module
//     handle, which it keeps for the life of the process and never
//     finalizes. The hsm package then sees CKR_CRYPTOKI_ALREADY_INITIALIZED
//     and never finalizes either, so tokens stay visible.
//   - Each token is created in-process: C_InitToken on the free slot
//     (SoftHSM always offers one uninitialized token), C_InitPIN as
//     security officer, then hsm.GenerateKey. The in-process library
//     sees it at once, and child processes started with Env() see it
//     because they initialize after it exists.
//   - Cleanup deletes the token's directory; when the last live token of
//     the process is gone the whole directory is removed (and recreated if
//     a later test asks for a token). SoftHSM keeps a deleted token's slot
//     but reports CKR_GENERAL_ERROR for it; hsm skips such slots.
//
// Consequences: SoftHSM must not have been initialized in the process
// before the first New (New fails loudly if it was), and the process's
// SOFTHSM2_CONF is overridden. Token labels are unique within the process:
// if a live token already has the requested label, New appends "-2", "-3",
// ... so parallel tests may ask for the same label; always use Token.Label.
package softhsmtest
