// Package compat is kmsd's wire-compatibility suite.
//
// It is a separate Go module on purpose: its tests import the official KES
// client github.com/minio/kms-go/kes (AGPL-3.0), which the main module must
// never import. The tests build the real kmsd binary from the repository root,
// start it against a real SoftHSM token and drive it over mutual TLS, either
// through the official client or with plain net/http + crypto/tls where the
// exact bytes on the wire matter (spec/kes-api.md §16).
//
// Run with:
//
//	cd compat && go test -race -count=1 ./...
//
// Environment:
//
//	KMSD_BIN=/path/to/kmsd      use a pre-built binary instead of building ../cmd/kmsd
//	KMSD_REQUIRE_SOFTHSM=1      fail (instead of skip) when SoftHSM is not installed
package compat
