package cluster

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
)

// Member is one server in the raft configuration.
type Member struct {
	ID       string
	Addr     string
	Suffrage string // "Voter", "Nonvoter" or "Staging"
}

// Status is a point-in-time description of the node and its cluster.
type Status struct {
	NodeID           string
	State            string // "Leader", "Follower", "Candidate", "Shutdown"
	Leader           string // leader's id, "" if unknown
	LeaderAddr       string
	Term             uint64
	CommitIndex      uint64
	AppliedIndex     uint64 // the FSM's applied index
	LastLogIndex     uint64
	Members          []Member
	FailureTolerance int // voters that may fail while a quorum remains
}

// IsLeader reports whether this node currently believes it is the leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the current leader's id and address, or "" if unknown.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// Status reports the node's view of the cluster. Members is empty if the
// configuration cannot be read (e.g. after Shutdown).
func (n *Node) Status() Status {
	id, addr := n.Leader()
	s := Status{
		NodeID:       n.cfg.NodeID,
		State:        n.raft.State().String(),
		Leader:       id,
		LeaderAddr:   addr,
		Term:         n.raft.CurrentTerm(),
		CommitIndex:  n.raft.CommitIndex(),
		AppliedIndex: n.fsm.AppliedIndex(),
		LastLogIndex: n.raft.LastIndex(),
	}
	s.Members, s.FailureTolerance = n.members()
	return s
}

func (n *Node) members() ([]Member, int) {
	fut := n.raft.GetConfiguration()
	if err := fut.Error(); err != nil {
		return nil, 0
	}
	var out []Member
	voters := 0
	for _, srv := range fut.Configuration().Servers {
		out = append(out, Member{ID: string(srv.ID), Addr: string(srv.Address), Suffrage: srv.Suffrage.String()})
		if srv.Suffrage == raft.Voter {
			voters++
		}
	}
	return out, failureTolerance(voters)
}

// failureTolerance is how many of v voters can fail with a quorum left.
func failureTolerance(v int) int {
	if v == 0 {
		return 0
	}
	return v - (v/2 + 1)
}

// Snapshot asks raft to take a snapshot now (and compact the log). It is
// not an error if nothing changed since the last snapshot.
func (n *Node) Snapshot(ctx context.Context) error {
	err := n.await(ctx, n.raft.Snapshot())
	var cd errCtxDone
	switch {
	case err == nil, errors.Is(err, raft.ErrNothingNewToSnapshot):
		return nil
	case errors.As(err, &cd):
		return fmt.Errorf("%w: snapshot: %w", ErrTimeout, cd.err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	}
	return fmt.Errorf("cluster: snapshot: %w", err)
}

// AddVoter adds (or updates the address of) a voting member. Leader only:
// a follower returns ErrNotLeader/ErrNoLeader. The change is committed
// when AddVoter returns nil.
func (n *Node) AddVoter(ctx context.Context, id, addr string) error {
	if id == "" || addr == "" {
		return errors.New("cluster: add voter: id and address are required")
	}
	fut := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeoutFrom(ctx))
	return n.mapMembershipErr("add voter", n.await(ctx, fut), fut)
}

// RemoveServer removes a member (voter or not). Leader only. Removing
// the leader itself makes it step down once the change commits.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("cluster: remove server: id is required")
	}
	fut := n.raft.RemoveServer(raft.ServerID(id), 0, timeoutFrom(ctx))
	return n.mapMembershipErr("remove server", n.await(ctx, fut), fut)
}

func (n *Node) mapMembershipErr(op string, err error, fut raft.IndexFuture) error {
	if err == nil {
		return nil
	}
	mapped := n.mapApplyErr(err, appended(err, fut))
	return fmt.Errorf("cluster: %s: %w", op, mapped)
}
