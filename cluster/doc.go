// Package cluster runs hashicorp/raft for kmsd: it owns the raft log and
// stable store (raft-boltdb/v2), the snapshot store, the node-to-node
// channel, bootstrap, join and membership, and it drives an fsm.FSM.
//
// The node channel is one TCP port with mutual TLS 1.3 (the cluster CA is
// the only trusted CA); ALPN routes each connection either to raft's
// transport ("kmsd-raft/1") or to an internal HTTP/1.1 RPC server
// ("kmsd-rpc/1") that carries write forwarding, read barriers, join,
// status, membership, leadership transfer, snapshot save/restore and the
// caller's extra endpoints (Config.RPC). Client is the same RPC client for
// the CLI.
//
// Node.Apply is the only write path: it encodes an fsm.Command and
// proposes it on the leader — forwarding it from a follower — and returns
// the fsm.Result, mapping raft's errors to this package's sentinels
// (ErrNoLeader, ErrTimeout, ErrUnknownOutcome, ErrShutdown, …), which
// also cross the wire as codes. Nothing outside this package sees a raft
// error. Node.ReadBarrier gives read-your-writes for local reads on any
// node. Recover is the offline way out of a lost quorum.
//
// See DESIGN.md.
package cluster
