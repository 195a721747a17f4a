// Package cluster runs hashicorp/raft for kmsd: it owns the raft log and
// stable store (raft-boltdb/v2), the snapshot store, the transport,
// bootstrap and membership, and it drives an fsm.FSM.
//
// Node.Apply is the only write path: it encodes an fsm.Command, proposes
// it on the leader and returns the fsm.Result, mapping raft's errors to
// this package's sentinels (ErrNotLeader, ErrNoLeader, ErrTimeout,
// ErrUnknownOutcome, ErrShutdown). Nothing outside this package sees a
// raft error. Node.ReadBarrier gives read-your-writes for local reads.
//
// See DESIGN.md.
package cluster
