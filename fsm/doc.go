// Package fsm is kmsd's replicated state machine: the command set, its
// frozen binary encoding, the key and stanza records, and the raft.FSM
// that applies committed commands to the local storage.DB.
//
// Apply is deterministic. Everything non-deterministic (key material,
// timestamps, request ids, the creator's identity) is made by the
// proposing node before the command enters the log, and only sealed key
// material ever does. Apply never calls the HSM, the clock or the random
// source, and fsm imports neither seal, hsm, api, cluster nor net/http.
//
// Domain outcomes are Result codes, not Go errors, so they survive
// forwarding between nodes; Result.Err maps them to the sentinels
// ErrKeyExists, ErrKeyNotFound, ErrInvalid and ErrInternal.
//
// See DESIGN.md for the byte formats and invariants.
package fsm
