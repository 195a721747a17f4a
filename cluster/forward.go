package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kmsd/kmsd/fsm"
)

// Backoff between attempts while leadership is unsettled (a follower's
// view of the leader is stale, an election or a transfer is running).
const (
	retryMin = 10 * time.Millisecond
	retryMax = 200 * time.Millisecond
)

// withDefaultTimeout gives ctx the package's default deadline if it has
// none, so no call waits forever.
func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, defaultTimeout)
}

// jitter returns d ± 25%.
func jitter(d time.Duration) time.Duration {
	return d - d/4 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// retryable reports whether an attempt failed before doing anything, so
// that running it again (possibly on another node) is safe: leadership
// was not where the caller thought, or the request never reached the
// remote handler. A remote "shutdown" means that leader is going away
// without having applied anything; a local one ends the loop.
func retryable(err error, remote bool) bool {
	switch {
	case err == nil, errors.Is(err, ErrUnknownOutcome):
		return false
	case errors.Is(err, ErrNotLeader), errors.Is(err, ErrNoLeader), isNotSent(err):
		return true
	case remote && errors.Is(err, ErrShutdown):
		return true
	}
	return false
}

// onLeader runs an operation on the leader: local when this node leads,
// otherwise remote(ctx, leaderAddr) over the node channel. It waits for a
// leader and retries (with a short jittered backoff) while an attempt
// fails retryably, until ctx ends (ErrNoLeader, wrapping ctx's error and
// the last failure) or the node shuts down (ErrShutdown).
//
// Without a node channel (Config.TLS nil) a follower returns
// ErrNotLeader/ErrNoLeader as before forwarding existed.
func (n *Node) onLeader(ctx context.Context, local func(context.Context) error, remote func(context.Context, string) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	backoff := retryMin
	var last error
	for {
		if n.raft.State() == raft.Leader {
			err := local(ctx)
			if !retryable(err, false) {
				return err
			}
			last = err
		} else if n.mux == nil {
			return n.notLeader()
		} else if _, addr := n.Leader(); addr == "" {
			if err := n.waitElection(ctx); err != nil {
				return err
			}
			continue
		} else if addr == string(n.mux.adv) {
			last = ErrNoLeader // raft names us but we do not lead (yet, or any more)
		} else {
			err := remote(ctx, addr)
			if !retryable(err, true) {
				return err
			}
			last = err
		}
		select {
		case <-time.After(jitter(backoff)):
		case <-ctx.Done():
			return fmt.Errorf("%w: %w (last attempt: %v)", ErrNoLeader, ctx.Err(), last)
		case <-n.baseCtx.Done():
			return ErrShutdown
		}
		backoff = min(2*backoff, retryMax)
	}
}

// errLeaderMoved is the cancellation cause of a forwarded request whose
// target stopped being the leader in this node's view.
var errLeaderMoved = errors.New("cluster: leadership moved while the request was in flight")

// whileLeader returns a context that is cancelled (cause errLeaderMoved)
// as soon as this node learns of a leader other than addr. A request to a
// leader that died without closing its connections (a lost VM) then ends
// within an election instead of at the caller's deadline.
func (n *Node) whileLeader(ctx context.Context, addr string) (context.Context, context.CancelFunc) {
	cctx, cancel := context.WithCancelCause(ctx)
	go func() {
		for {
			ch := n.leaderChanged()
			if _, a := n.Leader(); a != "" && a != addr {
				cancel(errLeaderMoved)
				return
			}
			select {
			case <-ch:
			case <-cctx.Done():
				return
			}
		}
	}()
	return cctx, func() { cancel(nil) }
}

// forwardApply sends an encoded command to the leader at addr.
func (n *Node) forwardApply(ctx context.Context, addr string, b []byte) (fsm.Result, error) {
	rctx, stop := n.whileLeader(ctx, addr)
	defer stop()
	res, err := n.client.apply(rctx, addr, b)
	if err != nil && errors.Is(context.Cause(rctx), errLeaderMoved) {
		err = fmt.Errorf("%w (%w)", err, errLeaderMoved)
	}
	return res, err
}

// forwardBarrier asks the leader at addr for its read index. It is a
// read: a request cut off by a leader change is simply retried.
func (n *Node) forwardBarrier(ctx context.Context, addr string) (uint64, error) {
	rctx, stop := n.whileLeader(ctx, addr)
	defer stop()
	index, err := n.client.barrier(rctx, addr)
	if err != nil && errors.Is(context.Cause(rctx), errLeaderMoved) {
		err = &notSentError{fmt.Errorf("%w (%w)", err, errLeaderMoved)}
	}
	return index, err
}

// waitElection waits for a leader while none is known, but only until
// Config.LeaderWait has passed since this node lost sight of one: an
// election takes well under a second, so a node leaderless for longer has
// most likely lost quorum and answers ErrNoLeader at once (a 503 at the
// API), letting the client move on instead of hanging until its deadline.
func (n *Node) waitElection(ctx context.Context) error {
	now := time.Now()
	n.leaderless.CompareAndSwap(0, now.UnixNano()) // an observation may have been dropped
	left := n.cfg.LeaderWait - now.Sub(time.Unix(0, n.leaderless.Load()))
	if left <= 0 {
		return fmt.Errorf("%w: none elected for over %s", ErrNoLeader, n.cfg.LeaderWait)
	}
	wctx, cancel := context.WithTimeout(ctx, left)
	defer cancel()
	if err := n.WaitLeader(wctx); err != nil {
		if errors.Is(err, ErrShutdown) {
			return ErrShutdown
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		}
		return fmt.Errorf("%w: none elected within %s", ErrNoLeader, n.cfg.LeaderWait)
	}
	return nil
}
