package cluster

import "errors"

// Errors returned by Node. The api package maps every one of them to 503
// so KES clients fail over to another node.
var (
	ErrNotLeader      = errors.New("cluster: not the leader")
	ErrNoLeader       = errors.New("cluster: no leader")
	ErrTimeout        = errors.New("cluster: timed out")
	ErrUnknownOutcome = errors.New("cluster: outcome unknown, the command may have been applied")
	ErrShutdown       = errors.New("cluster: shutting down")
)
