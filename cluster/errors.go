package cluster

import "errors"

// Errors returned by Node. The api package maps every one of them to 503
// so KES clients fail over to another node. They cross the node channel
// as codes (see wire.go) and compare equal with errors.Is on both sides.
var (
	ErrNotLeader      = errors.New("cluster: not the leader")
	ErrNoLeader       = errors.New("cluster: no leader")
	ErrTimeout        = errors.New("cluster: timed out")
	ErrUnknownOutcome = errors.New("cluster: outcome unknown, the command may have been applied")
	ErrShutdown       = errors.New("cluster: shutting down")

	// ErrForeignSnapshot: Restore refused a snapshot whose REK id differs
	// from the cluster's (its keys are sealed under another root key).
	ErrForeignSnapshot = errors.New("cluster: snapshot belongs to another cluster (REK id differs)")
	// ErrUnknownMember: the named server is not in the configuration.
	ErrUnknownMember = errors.New("cluster: no such member")
	// ErrInvalidArgument: a malformed request (empty id, bad address...).
	ErrInvalidArgument = errors.New("cluster: invalid argument")
)
