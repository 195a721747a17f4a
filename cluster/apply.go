package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kmsd/kmsd/fsm"
)

// defaultTimeout bounds raft calls when ctx has no deadline.
const defaultTimeout = 10 * time.Second

// Apply replicates cmd and returns the FSM's Result for it.
//
// On the leader it proposes cmd; on a follower it forwards the encoded
// command to the leader over the node channel (the leader proposes it
// locally, never forwarding again). It waits for a leader (bounded by
// ctx; 10 s when ctx has no deadline) and retries while leadership moves,
// so the caller never sees ErrNotLeader — except without a node channel
// (Config.TLS nil), where a follower still returns ErrNotLeader. Errors,
// all comparable with errors.Is:
//
//   - ErrNoLeader: no leader accepted the command before ctx ended; it
//     was not applied;
//   - ErrTimeout (ctx already done, or the leader could not enqueue it),
//     ErrShutdown (this node is stopping): not applied;
//   - ErrUnknownOutcome: the command reached the leader (its log, or the
//     leader's RPC handler with the response lost) but its fate is
//     unknown. It may still be applied: retry with the same request id;
//   - fsm.ErrInvalid: the command cannot be encoded or is too large.
//
// A domain outcome (key exists, not found, …) is not an error here: it is
// the returned Result's Code.
func (n *Node) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	b, err := fsm.Encode(cmd)
	if err != nil {
		return fsm.Result{}, fmt.Errorf("cluster: apply: %w: %w", fsm.ErrInvalid, err)
	}
	if len(b) > MaxCommandSize {
		return fsm.Result{}, fmt.Errorf("cluster: apply: %w: command of %d bytes exceeds %d", fsm.ErrInvalid, len(b), MaxCommandSize)
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var res fsm.Result
	err = n.onLeader(ctx,
		func(ctx context.Context) (err error) {
			res, err = n.applyLocal(ctx, b)
			return err
		},
		func(ctx context.Context, addr string) (err error) {
			start := time.Now()
			res, err = n.forwardApply(ctx, addr, b)
			if err == nil {
				n.metrics.forward.Observe(time.Since(start).Seconds())
			}
			return err
		})
	if err != nil {
		return fsm.Result{}, err
	}
	return res, nil
}

// applyLocal proposes encoded command bytes on this node.
func (n *Node) applyLocal(ctx context.Context, b []byte) (fsm.Result, error) {
	if err := ctx.Err(); err != nil {
		return fsm.Result{}, fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	if n.raft.State() != raft.Leader {
		return fsm.Result{}, n.notLeader()
	}
	start := time.Now()
	fut := n.raft.Apply(b, timeoutFrom(ctx))
	if err := n.await(ctx, fut); err != nil {
		return fsm.Result{}, n.mapApplyErr(err, appended(err, fut))
	}
	n.metrics.commit.Observe(time.Since(start).Seconds())
	res, ok := fut.Response().(fsm.Result)
	if !ok {
		return fsm.Result{}, fmt.Errorf("cluster: apply: %w: FSM response %T", fsm.ErrInternal, fut.Response())
	}
	return res, nil
}

// errCtxDone marks an await that ended because ctx did.
type errCtxDone struct{ err error }

func (e errCtxDone) Error() string { return e.err.Error() }
func (e errCtxDone) Unwrap() error { return e.err }

// await waits for fut, ctx or shutdown. raft futures take no context, so
// the wait runs in a goroutine that ends when raft answers (raft answers
// every future, at the latest on shutdown).
func (n *Node) await(ctx context.Context, fut raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- fut.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return errCtxDone{ctx.Err()}
	}
}

// appended reports whether fut's entry reached the leader's log, so that
// any failure leaves the outcome unknown. It reads fut.Index() only once
// raft has answered (the index is written by raft's goroutine before).
func appended(err error, fut raft.IndexFuture) bool {
	var cd errCtxDone
	if errors.As(err, &cd) {
		return true // enqueued and still pending
	}
	return fut.Index() != 0
}

// mapApplyErr translates raft's errors; nothing outside this package
// sees raft errors.
func (n *Node) mapApplyErr(err error, appended bool) error {
	var cd errCtxDone
	switch {
	case errors.As(err, &cd):
		// raft.Apply had already enqueued the command: it may commit.
		return fmt.Errorf("%w: %w", ErrUnknownOutcome, cd.err)
	case errors.Is(err, raft.ErrNotLeader):
		return n.notLeader()
	case errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w: leadership transfer in progress", ErrNoLeader)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return ErrTimeout
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrAbortedByRestore):
		return fmt.Errorf("%w: %w", ErrUnknownOutcome, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		if appended {
			return fmt.Errorf("%w: %w", ErrUnknownOutcome, ErrShutdown)
		}
		return ErrShutdown
	}
	if appended {
		return fmt.Errorf("%w: %w", ErrUnknownOutcome, err)
	}
	return fmt.Errorf("cluster: apply: %w", err)
}

// notLeader returns ErrNotLeader naming the leader, or ErrNoLeader.
func (n *Node) notLeader() error {
	id, addr := n.Leader()
	if id == "" {
		return ErrNoLeader
	}
	return fmt.Errorf("%w (leader %s at %s)", ErrNotLeader, id, addr)
}

// timeoutFrom turns ctx's deadline into a raft timeout.
func timeoutFrom(ctx context.Context) time.Duration {
	d, ok := ctx.Deadline()
	if !ok {
		return defaultTimeout
	}
	return max(time.Until(d), time.Millisecond)
}

// ReadBarrier returns once this node's FSM reflects every write that was
// acknowledged before the call (linearizable read point). Use it before
// answering "not found" from local state.
//
// On the leader it confirms leadership and waits for the FSM to catch up
// (see readIndex). On a follower it asks the leader for its read index
// over the node channel, then waits until the local FSM has applied it
// (fsm.WaitApplied). No leader before ctx ends (10 s without a deadline)
// → ErrNoLeader; ctx already done, or ending while the local FSM catches
// up → ErrTimeout. Without a node channel a follower returns
// ErrNotLeader/ErrNoLeader.
func (n *Node) ReadBarrier(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var index uint64
	err := n.onLeader(ctx,
		func(ctx context.Context) (err error) {
			index, err = n.readIndex(ctx) // the local FSM has applied it
			return err
		},
		func(ctx context.Context, addr string) (err error) {
			index, err = n.forwardBarrier(ctx, addr)
			return err
		})
	if err != nil {
		return err
	}
	if err := n.fsm.WaitApplied(ctx, index); err != nil {
		return fmt.Errorf("%w: read barrier: %w", ErrTimeout, err)
	}
	return nil
}

// readIndex is the leader side of the read barrier. It returns an FSM
// applied index that covers every write acknowledged before the call; a
// follower that waits for its own FSM to reach that index
// (fsm.WaitApplied) is then up to date too.
//
// raft's commit index cannot be waited for directly: leader no-op and
// barrier entries never reach the FSM, so its applied index may stay
// below the commit index forever. Fast path (no disk write): if the FSM
// has applied an entry of the current term, the leader's commit index is
// authoritative; if the FSM has also reached it and VerifyLeader confirms
// a quorum still follows this leader in the same term, the FSM's index is
// the answer. Otherwise a raft Barrier (one replicated entry) guarantees
// every earlier entry has been applied.
func (n *Node) readIndex(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	if n.raft.State() != raft.Leader {
		return 0, n.notLeader()
	}
	term := n.raft.CurrentTerm()
	index, fsmTerm := n.fsm.Applied()
	commit := n.raft.CommitIndex()
	if fsmTerm == term && index >= commit {
		if err := n.await(ctx, n.raft.VerifyLeader()); err != nil {
			return 0, n.mapReadErr(err)
		}
		if n.raft.CurrentTerm() == term {
			return index, nil
		}
	}
	if err := n.await(ctx, n.raft.Barrier(timeoutFrom(ctx))); err != nil {
		return 0, n.mapReadErr(err)
	}
	return n.fsm.AppliedIndex(), nil
}

func (n *Node) mapReadErr(err error) error {
	var cd errCtxDone
	switch {
	case errors.As(err, &cd):
		return fmt.Errorf("%w: %w", ErrTimeout, cd.err)
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return n.notLeader()
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return ErrTimeout
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	}
	return fmt.Errorf("cluster: read barrier: %w", err)
}

// WaitLeader returns once some leader (possibly this node) is known, or
// with ErrTimeout when ctx ends first, or ErrShutdown.
func (n *Node) WaitLeader(ctx context.Context) error {
	for {
		ch := n.leaderChanged()
		if id, _ := n.Leader(); id != "" {
			return nil
		}
		select {
		case <-ch:
		case <-n.done:
			return ErrShutdown
		case <-ctx.Done():
			return fmt.Errorf("%w: waiting for a leader: %w", ErrTimeout, ctx.Err())
		}
	}
}
