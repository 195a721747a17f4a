package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/hashicorp/raft"

	"github.com/kmsd/kmsd/health"
)

// Member is one server in the raft configuration.
type Member struct {
	ID       string `json:"id"`
	Addr     string `json:"addr"`
	Suffrage string `json:"suffrage"` // "Voter", "Nonvoter" or "Staging"
	// Health is filled by ClusterStatus only (zero in Status).
	Health Health `json:"health"`
}

// Health is a member's answer to ClusterStatus's probe.
type Health struct {
	Reachable bool   `json:"reachable"`         // it answered GET /cluster/v1/status in time
	State     string `json:"state,omitempty"`   // its raft state
	Applied   uint64 `json:"applied,omitempty"` // its FSM's applied index
	Err       string `json:"error,omitempty"`   // why it is not reachable

	// From the member's own health report (Config.Health). Status is ""
	// when it sent none (unreachable, no hook, or an older kmsd); Live
	// and Ready mean something only when Status is set.
	Status  string         `json:"status,omitempty"` // "ok", "degraded" or "fail"
	Live    bool           `json:"live"`
	Ready   bool           `json:"ready"`
	Failing []health.Check `json:"failing,omitempty"` // its checks that are not OK
}

// withReport fills h's health fields from rep (nil: none).
func (h Health) withReport(rep *health.Report) Health {
	if rep == nil {
		return h
	}
	h.Status, h.Live, h.Ready, h.Failing = rep.Status.String(), rep.Live, rep.Ready, rep.Failing()
	return h
}

// Status is a point-in-time description of the node and its cluster.
type Status struct {
	NodeID           string   `json:"node_id"`
	State            string   `json:"state"`  // "Leader", "Follower", "Candidate", "Shutdown"
	Leader           string   `json:"leader"` // leader's id, "" if unknown
	LeaderAddr       string   `json:"leader_addr"`
	Term             uint64   `json:"term"`
	CommitIndex      uint64   `json:"commit_index"`
	AppliedIndex     uint64   `json:"applied_index"` // the FSM's applied index
	LastLogIndex     uint64   `json:"last_log_index"`
	Members          []Member `json:"members"`
	FailureTolerance int      `json:"failure_tolerance"` // voters that may fail while a quorum remains
	// Report is the node's own health report (Config.Health), filled by
	// ClusterStatus and the status RPC only; nil without a hook.
	Report *health.Report `json:"report,omitempty"`
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

// Members returns the servers in the raft configuration (nil if it
// cannot be read, e.g. after Shutdown).
func (n *Node) Members() []Member {
	m, _ := n.members()
	return m
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

// AddVoter adds a voting member, or updates the address of member id.
// On a follower it is forwarded to the leader (as Apply is). It is
// idempotent: nil at once if id is already a voter at addr. Another
// member with the same address is removed first (a wiped node that
// re-joins under a new id); changing the leader's own address is refused.
// The change is committed when AddVoter returns nil.
func (n *Node) AddVoter(ctx context.Context, id, addr string) error {
	if err := validateMember(id, addr); err != nil {
		return err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	return n.onLeader(ctx,
		func(ctx context.Context) error { return n.addVoterLocal(ctx, id, addr) },
		func(ctx context.Context, leader string) error { return n.client.join(ctx, leader, id, addr, true) })
}

// RemoveServer removes a member (voter or not); ErrUnknownMember if id
// is not in the configuration. Forwarded to the leader. Removing the
// leader itself makes it step down once the change commits.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	if err := validateID(id); err != nil {
		return err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	return n.onLeader(ctx,
		func(ctx context.Context) error { return n.removeLocal(ctx, id) },
		func(ctx context.Context, leader string) error { return n.client.remove(ctx, leader, id, true) })
}

const maxIDLen = 128

func validateID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("%w: member id must be 1..%d bytes", ErrInvalidArgument, maxIDLen)
	}
	for _, r := range id {
		if r <= ' ' || r == 0x7f {
			return fmt.Errorf("%w: member id %q contains spaces or control characters", ErrInvalidArgument, id)
		}
	}
	return nil
}

func validateMember(id, addr string) error {
	if err := validateID(id); err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || len(addr) > 256 {
		return fmt.Errorf("%w: member address %q must be host:port", ErrInvalidArgument, addr)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("%w: member address %q: bad port", ErrInvalidArgument, addr)
	}
	return nil
}

// configuration returns raft's latest configuration.
func (n *Node) configuration(ctx context.Context) (raft.Configuration, error) {
	fut := n.raft.GetConfiguration()
	if err := n.await(ctx, fut); err != nil {
		return raft.Configuration{}, n.mapReadErr(err)
	}
	return fut.Configuration(), nil
}

func (n *Node) addVoterLocal(ctx context.Context, id, addr string) error {
	if err := validateMember(id, addr); err != nil {
		return err
	}
	if n.raft.State() != raft.Leader {
		return n.notLeader()
	}
	conf, err := n.configuration(ctx)
	if err != nil {
		return err
	}
	for _, s := range conf.Servers {
		switch {
		case string(s.ID) == id && string(s.Address) == addr && s.Suffrage == raft.Voter:
			return nil
		case string(s.ID) == id && id == n.cfg.NodeID:
			return fmt.Errorf("%w: id %q is the leader's own, at %s", ErrInvalidArgument, id, s.Address)
		case string(s.ID) != id && string(s.Address) == addr:
			n.log.Warn("replacing the member that had this address", "old_id", s.ID, "new_id", id, "addr", addr)
			if err := n.removeLocal(ctx, string(s.ID)); err != nil {
				return err
			}
		}
	}
	fut := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeoutFrom(ctx))
	if err := n.mapMembershipErr("add voter", n.await(ctx, fut), fut); err != nil {
		return err
	}
	n.log.Info("added voter", "id", id, "addr", addr)
	return nil
}

func (n *Node) removeLocal(ctx context.Context, id string) error {
	if err := validateID(id); err != nil {
		return err
	}
	if n.raft.State() != raft.Leader {
		return n.notLeader()
	}
	conf, err := n.configuration(ctx)
	if err != nil {
		return err
	}
	found := false
	for _, s := range conf.Servers {
		found = found || string(s.ID) == id
	}
	if !found {
		return fmt.Errorf("%w: %q", ErrUnknownMember, id)
	}
	fut := n.raft.RemoveServer(raft.ServerID(id), 0, timeoutFrom(ctx))
	if err := n.mapMembershipErr("remove server", n.await(ctx, fut), fut); err != nil {
		return err
	}
	n.log.Info("removed member", "id", id)
	return nil
}

func (n *Node) mapMembershipErr(op string, err error, fut raft.IndexFuture) error {
	if err == nil {
		return nil
	}
	mapped := n.mapApplyErr(err, appended(err, fut))
	return fmt.Errorf("cluster: %s: %w", op, mapped)
}
