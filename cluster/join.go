package cluster

import (
	"context"
	"time"
)

// Join loop timing: attempts back off from joinBackoffMin, doubling to
// joinBackoffMax, jittered ±25%; one RPC is bounded by joinRPCTimeout; a
// successful join is followed by up to joinSettle of waiting for the
// leader's configuration to reach this node.
const (
	joinBackoffMin = 250 * time.Millisecond
	joinBackoffMax = 5 * time.Second
	joinRPCTimeout = 5 * time.Second
	joinSettle     = 5 * time.Second
	memberPoll     = 50 * time.Millisecond
)

// startJoin closes Joined at once for a member; otherwise it starts the
// join loop (a node without raft state that has peers and does not
// bootstrap) or a membership watch.
func (n *Node) startJoin() {
	if n.isMember() {
		n.markJoined()
		return
	}
	n.joinDone = make(chan struct{})
	if n.hadState || n.cfg.Bootstrap || len(n.cfg.Peers) == 0 || n.mux == nil {
		if !n.hadState && !n.cfg.Bootstrap {
			n.log.Warn("no raft state and no peers to join through: waiting to be added by the leader")
		}
		go n.watchMembership()
		return
	}
	go n.joinLoop()
}

// watchMembership closes Joined once the node is added by other means
// (AddVoter on the leader), polling until then or Shutdown.
func (n *Node) watchMembership() {
	defer close(n.joinDone)
	for !n.isMember() {
		select {
		case <-time.After(5 * memberPoll):
		case <-n.baseCtx.Done():
			return
		}
	}
	n.markJoined()
}

func (n *Node) markJoined() { n.joinedOnce.Do(func() { close(n.joined) }) }

// isMember reports whether this node is in the configuration it knows.
func (n *Node) isMember() bool {
	fut := n.raft.GetConfiguration()
	if fut.Error() != nil {
		return false
	}
	for _, s := range fut.Configuration().Servers {
		if string(s.ID) == n.cfg.NodeID {
			return true
		}
	}
	return false
}

// joinLoop asks each peer in turn (any member forwards to the leader)
// to add this node, until the node sees itself in the configuration or
// Shutdown. It retries forever: a node that cannot join has nothing else
// to do, and an operator may start the peers later.
func (n *Node) joinLoop() {
	defer close(n.joinDone)
	ctx := n.baseCtx
	self := string(n.mux.adv)
	backoff := joinBackoffMin
	for attempt := 1; ; attempt++ {
		if n.isMember() {
			n.markJoined()
			n.log.Info("joined the cluster", "attempts", attempt-1)
			return
		}
		for _, peer := range n.cfg.Peers {
			if peer == self {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, joinRPCTimeout)
			err := n.client.join(cctx, peer, n.cfg.NodeID, self, false)
			cancel()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				lvl := n.log.Debug
				if attempt == 1 || attempt%10 == 0 {
					lvl = n.log.Warn
				}
				lvl("join: peer did not add this node; will retry", "peer", peer, "attempt", attempt, "error", err)
				continue
			}
			n.log.Info("join: accepted", "peer", peer, "attempt", attempt)
			if n.waitMember(ctx, joinSettle) {
				n.markJoined()
				n.log.Info("joined the cluster", "attempts", attempt)
				return
			}
			break
		}
		select {
		case <-time.After(jitter(backoff)):
		case <-ctx.Done():
			return
		}
		backoff = min(2*backoff, joinBackoffMax)
	}
}

// waitMember polls until this node is in its configuration, d passes or
// ctx ends.
func (n *Node) waitMember(ctx context.Context, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	t := time.NewTicker(memberPoll)
	defer t.Stop()
	for {
		if n.isMember() {
			return true
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return false
		}
	}
}
