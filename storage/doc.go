// Package storage is kmsd's durable local state: a thin, transactional
// byte-level layer over badger/v4.
//
// It knows nothing about raft, keys or cryptography. The fsm package is its
// only caller; it keeps the replicated state here and records the raft
// index it has applied in the same transaction as the data
// (Txn.SetApplied), so a restart never applies an entry twice.
//
// Keys starting with byte 0x00 are reserved for the package's own
// bookkeeping (the applied index); Txn.Set and Txn.Delete reject them and
// iteration never returns them.
//
// See DESIGN.md for the invariants.
package storage
