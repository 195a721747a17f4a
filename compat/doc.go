// Package compat is kmsd's wire-compatibility suite.
//
// It is a separate Go module on purpose: its tests import the official KES
// client github.com/minio/kms-go/kes (AGPL-3.0), which the main module must
// never import. The tests build the real kmsd binary from the repository root,
// start it against a real SoftHSM token and drive it over mutual TLS, either
// through the official client or with plain net/http + crypto/tls where the
// exact bytes on the wire matter (spec/kes-api.md §16).
//
// Multi-node tests (cluster_test.go, failover_test.go) start three kmsd
// processes on loopback, each with its own SoftHSM token, data dir, API
// port and node-channel port, one test PKI for the API and a separate
// cluster CA for the node channel; `kmsd init` runs on the first node only
// and the others join (cluster_harness_test.go). They do not run in
// parallel with the single-node tests, so raft's 200 ms timeouts are not
// starved of CPU on a small CI machine.
//
// Run with:
//
//	cd compat && go test -race -count=1 ./...
//
// Environment:
//
//	KMSD_BIN=/path/to/kmsd      use a pre-built binary instead of building ../cmd/kmsd
//	KMSD_REQUIRE_SOFTHSM=1      fail (instead of skip) when SoftHSM is not installed
//	KMSD_COMPAT_STRICT=1        also run strict_test.go: requirements that fail today
//	                            (kms-go's 30 s endpoint quarantine, creates in flight
//	                            at a leader kill answering 503)
package compat
