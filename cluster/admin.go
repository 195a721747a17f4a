package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/health"
)

// healthTimeout bounds ClusterStatus's probe of one member.
const healthTimeout = time.Second

// ClusterStatus is Status plus every member's health: each other member
// is asked for its own status and health report (GET /cluster/v1/status)
// in parallel, at most about a second each (and never beyond ctx). This
// node reports itself without a probe, its health report (Config.Health)
// bounded the same way.
func (n *Node) ClusterStatus(ctx context.Context) Status {
	s := n.Status()
	var wg sync.WaitGroup
	wg.Go(func() {
		cctx, cancel := context.WithTimeout(ctx, healthTimeout)
		defer cancel()
		s.Report = n.report(cctx)
	})
	for i := range s.Members {
		m := &s.Members[i]
		if m.ID == n.cfg.NodeID {
			continue // filled from s.Report below
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, healthTimeout)
			defer cancel()
			st, err := n.client.localStatus(cctx, m.Addr)
			switch {
			case err != nil:
				m.Health = Health{Err: err.Error()}
			case st.NodeID != m.ID:
				m.Health = Health{Err: fmt.Sprintf("the node at %s is %q, not %q", m.Addr, st.NodeID, m.ID)}
			default:
				m.Health = Health{Reachable: true, State: st.State, Applied: st.AppliedIndex}.withReport(st.Report)
			}
		})
	}
	wg.Wait()
	for i := range s.Members {
		if m := &s.Members[i]; m.ID == n.cfg.NodeID {
			m.Health = Health{Reachable: true, State: s.State, Applied: s.AppliedIndex}.withReport(s.Report)
		}
	}
	return s
}

// report runs Config.Health (nil without a hook). The hook's context
// ends a little before ctx, so a check that gives up at its deadline is
// still reported; a hook that ignores its context is abandoned when ctx
// ends, and the report is then a single failing "health" check.
func (n *Node) report(ctx context.Context) *health.Report {
	if n.cfg.Health == nil {
		return nil
	}
	hctx := ctx
	if d, ok := ctx.Deadline(); ok {
		rem := time.Until(d)
		var cancel context.CancelFunc
		hctx, cancel = context.WithDeadline(ctx, d.Add(-min(rem/10, 100*time.Millisecond)))
		defer cancel()
	}
	done := make(chan health.Report, 1)
	go func() { done <- n.cfg.Health(hctx) }()
	select {
	case rep := <-done:
		return &rep
	case <-ctx.Done():
		return &health.Report{
			Live: true, Status: health.Fail, Time: time.Now().UTC(),
			Checks: []health.Check{{Name: "health", Status: health.Fail, Message: "the health checks did not answer in time"}},
		}
	}
}

// Call sends one request to the node at addr over the node channel (see
// Client.Do); used for the Config.RPC endpoints under ExtPrefix. The
// caller closes the response body; a non-2xx status is not an error.
func (n *Node) Call(ctx context.Context, addr, method, path string, body io.Reader) (*http.Response, error) {
	return n.client.Do(ctx, addr, method, path, body)
}

// Joined returns a channel that is closed once this node is in the
// raft configuration it knows: at Open for a bootstrapped node or one
// that restarts as a member, otherwise when the join loop (Config.Peers)
// has seen the leader add it. It never closes for a node with raft state
// that is not a member (e.g. it was removed).
func (n *Node) Joined() <-chan struct{} { return n.joined }

// TransferLeadership moves leadership to the voter id, or to the most
// up-to-date other voter when id is "". Forwarded to the leader; nil
// without a change when id already leads. It returns once the old leader
// stepped down (a new leader is usually known a moment later).
func (n *Node) TransferLeadership(ctx context.Context, id string) error {
	if id != "" {
		if err := validateID(id); err != nil {
			return err
		}
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	return n.onLeader(ctx,
		func(ctx context.Context) error { return n.transferLocal(ctx, id) },
		func(ctx context.Context, leader string) error { return n.client.transfer(ctx, leader, id, true) })
}

func (n *Node) transferLocal(ctx context.Context, id string) error {
	if n.raft.State() != raft.Leader {
		return n.notLeader()
	}
	var fut raft.Future
	if id == "" {
		fut = n.raft.LeadershipTransfer()
	} else {
		if id == n.cfg.NodeID {
			return nil
		}
		conf, err := n.configuration(ctx)
		if err != nil {
			return err
		}
		var target *raft.Server
		for i, s := range conf.Servers {
			if string(s.ID) == id {
				target = &conf.Servers[i]
			}
		}
		switch {
		case target == nil:
			return fmt.Errorf("%w: %q", ErrUnknownMember, id)
		case target.Suffrage != raft.Voter:
			return fmt.Errorf("%w: %q is not a voter", ErrInvalidArgument, id)
		}
		fut = n.raft.LeadershipTransferToServer(target.ID, target.Address)
	}
	err := n.await(ctx, fut)
	var cd errCtxDone
	switch {
	case err == nil:
		n.log.Info("leadership transferred", "to", id)
		return nil
	case errors.As(err, &cd):
		return fmt.Errorf("%w: leadership transfer: %w", ErrTimeout, cd.err)
	case errors.Is(err, raft.ErrNotLeader):
		return n.notLeader()
	case errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("cluster: transfer leadership: %w", err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	}
	return fmt.Errorf("cluster: transfer leadership: %w", err)
}

// WriteSnapshot writes a snapshot of the replicated state to w in the
// fsm snapshot format (header, records with key material still sealed,
// SHA-256 trailer), after a read barrier so it holds every write
// acknowledged before the call. The stream is verified as it is written
// (fsm.VerifySnapshot); the returned info describes it.
func (n *Node) WriteSnapshot(ctx context.Context, w io.Writer) (fsm.SnapshotInfo, error) {
	if err := n.ReadBarrier(ctx); err != nil {
		return fsm.SnapshotInfo{}, fmt.Errorf("cluster: snapshot: %w", err)
	}
	snap, err := n.fsm.Snapshot()
	if err != nil {
		return fsm.SnapshotInfo{}, fmt.Errorf("cluster: snapshot: %w", err)
	}
	defer snap.Release()

	type verified struct {
		info fsm.SnapshotInfo
		err  error
	}
	pr, pw := io.Pipe()
	vc := make(chan verified, 1)
	go func() {
		info, err := fsm.VerifySnapshot(pr)
		if err == nil {
			err = io.ErrClosedPipe // any further write is an error
		}
		pr.CloseWithError(err)
		if err == io.ErrClosedPipe {
			err = nil
		}
		vc <- verified{info, err}
	}()
	perr := snap.Persist(&writerSink{w: io.MultiWriter(ctxWriter{ctx, w}, pw)})
	pw.CloseWithError(perr) // nil: EOF for the verifier
	v := <-vc
	if perr != nil {
		return v.info, fmt.Errorf("cluster: snapshot: %w", perr)
	}
	if v.err != nil {
		return v.info, fmt.Errorf("cluster: snapshot: verifying the written stream: %w", v.err)
	}
	return v.info, nil
}

// writerSink is a raft.SnapshotSink over a plain writer.
type writerSink struct{ w io.Writer }

func (s *writerSink) Write(p []byte) (int, error) { return s.w.Write(p) }
func (s *writerSink) Close() error                { return nil }
func (s *writerSink) Cancel() error               { return nil }
func (s *writerSink) ID() string                  { return "kmsd-snapshot-save" }

// ctxWriter fails writes once ctx is done.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// ctxReader fails reads once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Restore replaces the cluster's state with the snapshot read from r
// (the fsm snapshot format, e.g. from WriteSnapshot or `kmsd snapshot
// save`). The stream is spooled to a temporary file under DataDir and
// verified completely (fsm.VerifySnapshot) first; a snapshot whose REK
// id differs from the cluster's is refused with ErrForeignSnapshot (a
// cluster without a REK yet accepts any). Then the leader — this node,
// or the leader the spooled file is forwarded to — restores it with
// raft's user restore, which replicates it to every member.
//
// Restore is for disaster recovery: writes in flight are aborted, and a
// follower that has not installed the restored snapshot yet serves the old
// state until it does (usually within a heartbeat); its read barrier
// waits for it.
func (n *Node) Restore(ctx context.Context, r io.Reader) error {
	return n.restore(ctx, r, false)
}

func (n *Node) restore(ctx context.Context, r io.Reader, localOnly bool) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, maxLongRPCTimeout)
		defer cancel()
	}
	path, info, size, err := n.spool(ctx, r)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	if err := n.checkREK(info); err != nil {
		return err
	}
	local := func(ctx context.Context) error { return n.restoreLocal(ctx, path, info, size) }
	if localOnly {
		return local(ctx)
	}
	remote := func(ctx context.Context, leader string) error {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("cluster: restore: %w", err)
		}
		defer f.Close()
		return n.client.restore(ctx, leader, f, true)
	}
	// Restoring the same snapshot again is harmless, so an attempt with an
	// unknown outcome (typically: leadership lost while the restored state
	// was being committed, which may undo it) is run again, a few times.
	for attempt := 1; ; attempt++ {
		err = n.onLeader(ctx, local, remote)
		if !errors.Is(err, ErrUnknownOutcome) || attempt == restoreAttempts || ctx.Err() != nil {
			return err
		}
		n.log.Warn("restore: outcome unknown; restoring again", "attempt", attempt, "error", err)
	}
}

// restoreAttempts bounds Restore's attempts after unknown outcomes.
const restoreAttempts = 3

// spool copies r into a temporary file under DataDir, verifying it.
func (n *Node) spool(ctx context.Context, r io.Reader) (string, fsm.SnapshotInfo, int64, error) {
	f, err := os.CreateTemp(n.cfg.DataDir, "restore-*.snap")
	if err != nil {
		return "", fsm.SnapshotInfo{}, 0, fmt.Errorf("cluster: restore: %w", err)
	}
	cw := &countingWriter{w: f}
	info, err := fsm.VerifySnapshot(io.TeeReader(ctxReader{ctx, r}, cw))
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", info, 0, fmt.Errorf("cluster: restore: %w", err)
	}
	return f.Name(), info, cw.n, nil
}

func (n *Node) checkREK(info fsm.SnapshotInfo) error {
	cur, err := n.fsm.REKID()
	if err != nil {
		return fmt.Errorf("cluster: restore: %w", err)
	}
	if cur != "" && info.REKID != cur {
		return fmt.Errorf("%w: the snapshot's REK id is %q, the cluster's %q", ErrForeignSnapshot, info.REKID, cur)
	}
	return nil
}

// restoreLocal is the leader side of Restore.
func (n *Node) restoreLocal(ctx context.Context, path string, info fsm.SnapshotInfo, size int64) error {
	if n.raft.State() != raft.Leader {
		return n.notLeader()
	}
	if err := n.checkREK(info); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("cluster: restore: %w", err)
	}
	meta := &raft.SnapshotMeta{
		Version: raft.SnapshotVersionMax, ID: "kmsd-restore",
		Index: info.Index, Term: info.Term, Size: size,
	}
	// raft.Restore takes no context and cannot be aborted once ingested;
	// it keeps the (already unlinked) file open until it is done.
	done := make(chan error, 1)
	go func() {
		defer f.Close()
		done <- n.raft.Restore(meta, f, timeoutFrom(ctx))
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		return fmt.Errorf("%w: restore: %w", ErrUnknownOutcome, ctx.Err())
	}
	switch {
	case err == nil:
		n.log.Warn("restored a snapshot: the cluster's state was replaced",
			"snapshot_index", info.Index, "keys", info.Keys, "stanzas", info.Stanzas, "rek_id", info.REKID)
		n.markRestore(ctx)
		return nil
	case errors.Is(err, raft.ErrNotLeader):
		return n.notLeader()
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: restore", ErrTimeout)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: restore: %w", ErrUnknownOutcome, ErrShutdown)
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrAbortedByRestore):
		return fmt.Errorf("%w: restore: %w", ErrUnknownOutcome, err)
	}
	return fmt.Errorf("cluster: restore: %w", err)
}

// markRestore commits one entry the FSM sees right after a restore. The
// restored FSM's applied index is the snapshot header's, which may be
// below what a follower that has not installed the snapshot yet had
// applied; the read index the leader hands out would then let that
// follower pass a barrier with its old state. Once an entry after the
// restore is applied, the read index is above the restore point and a
// follower must install the snapshot to reach it. The entry is a
// DeleteKey with an empty name: the FSM rejects it as invalid without
// touching the state (only the applied index moves). Best effort: the
// next write has the same effect.
func (n *Node) markRestore(ctx context.Context) {
	b, err := fsm.Encode(&fsm.DeleteKey{})
	if err == nil {
		_, err = n.applyLocal(ctx, b)
	}
	if err != nil {
		n.log.Warn("restore: could not commit the post-restore marker; read barriers on lagging followers may pass with the old state until the next write", "error", err)
	}
}

// Recover rewrites the raft configuration of a stopped node to exactly
// members (raft.RecoverCluster): the way out when a quorum is lost for
// good. It must run while the node is stopped (the raft store is locked
// by a running node; Recover then fails after a second) on the FSM the
// node will use (f's state stays valid: the FSM is persistent and is
// brought to the last entry in the log).
//
// members must contain cfg.NodeID as a voter. The usual procedure: stop
// the survivor, Recover it with itself as the only member, start it (it
// elects itself), then wipe the lost nodes' data directories and let them
// join again. See DESIGN.md. Entries that were in the survivor's log but
// never committed become committed: this is inherent to the operation.
func Recover(ctx context.Context, cfg Config, f *fsm.FSM, members []Member) error {
	if f == nil {
		return errors.New("cluster: recover: nil FSM")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cluster: recover: %w", err)
	}
	cfg = cfg.withDefaults()
	switch {
	case cfg.NodeID == "":
		return errors.New("cluster: recover: NodeID is required")
	case cfg.DataDir == "":
		return errors.New("cluster: recover: DataDir is required")
	case len(members) == 0:
		return fmt.Errorf("cluster: recover: %w: no members", ErrInvalidArgument)
	}
	conf := raft.Configuration{}
	self := false
	for _, m := range members {
		if err := validateMember(m.ID, m.Addr); err != nil {
			return fmt.Errorf("cluster: recover: %w", err)
		}
		suffrage := raft.Voter
		switch m.Suffrage {
		case "", raft.Voter.String():
		case raft.Nonvoter.String():
			suffrage = raft.Nonvoter
		default:
			return fmt.Errorf("cluster: recover: %w: suffrage %q", ErrInvalidArgument, m.Suffrage)
		}
		self = self || (m.ID == cfg.NodeID && suffrage == raft.Voter)
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: suffrage, ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.Addr)})
	}
	if !self {
		return fmt.Errorf("cluster: recover: %w: %s must be a voter in the new configuration", ErrInvalidArgument, cfg.NodeID)
	}
	dir := filepath.Join(cfg.DataDir, "raft")
	dbPath := filepath.Join(dir, "raft.db")
	if _, err := os.Stat(dbPath); err != nil {
		return fmt.Errorf("cluster: recover: no raft state: %w", err)
	}
	hl := newHCLog(cfg.Logger, "").(*hclogAdapter)
	store, err := raftboltdb.New(raftboltdb.Options{
		Path: dbPath, BoltOptions: boltOptions(time.Second),
	})
	if err != nil {
		return fmt.Errorf("cluster: recover: open raft.db (is the node still running?): %w", err)
	}
	defer store.Close()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, cfg.SnapshotRetain, hl.Named("snapshot"))
	if err != nil {
		return fmt.Errorf("cluster: recover: %w", err)
	}
	rc, err := cfg.raftConfig(hl, false)
	if err != nil {
		return fmt.Errorf("cluster: recover: %w", err)
	}
	_, trans := raft.NewInmemTransport(raft.ServerAddress(members[0].Addr))
	defer trans.Close()
	if err := raft.RecoverCluster(rc, f, store, store, snaps, trans, conf); err != nil {
		return fmt.Errorf("cluster: recover: %w", err)
	}
	cfg.Logger.Warn("raft configuration recovered", "component", "cluster", "node", cfg.NodeID,
		"members", len(members), "applied", f.AppliedIndex())
	return nil
}
