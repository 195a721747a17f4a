// Package api serves the MinIO KES key API over mutual TLS, byte for byte
// as existing KES clients (MinIO, the kes CLI, kms-go) expect it, on top
// of kmsd's replicated key store.
//
// The moving parts, one place each:
//
//   - routes.go: THE route table (path, method, body limit, timeout, auth,
//     handler) and the request pipeline: method check, resource, body
//     limit, deadline, authentication and authorization, handler.
//   - errors.go: THE error table mapping Go sentinels from fsm, seal and
//     cluster to the exact KES status and message. Anything not in it is
//     logged in full and answered with the route's generic 500/502 text.
//   - auth.go, policy.go, validate.go: identities (SHA-256 of the client
//     certificate's public key), the admin, policies and name rules.
//   - handlers_*.go: the endpoints. Reads come from the local replica,
//     with a read barrier only on a miss; writes go through the cluster.
//   - stream.go, metrics.go: audit and error NDJSON streams, Prometheus.
//   - apikey.go: KES API keys ("kes:v1:...") and their certificates.
//
// See DESIGN.md for the invariants and the choices made where the KES
// behaviour is buggy or unspecified.
package api
