package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/kmsd/kmsd/fsm"
)

// ErrStateMismatch is returned by Open when the FSM's storage holds
// applied state but raft has no log, stable store or snapshot: the data
// directories do not belong together, and starting would make the FSM
// skip entries it never applied.
var ErrStateMismatch = errors.New("cluster: FSM state without raft state")

const (
	logCacheSize     = 512
	transportPool    = 3
	transportTimeout = 5 * time.Second
)

// Node is one raft member driving an fsm.FSM. Its methods are safe for
// concurrent use.
type Node struct {
	cfg   Config
	log   *slog.Logger
	raft  *raft.Raft
	fsm   *fsm.FSM
	trans raft.Transport
	bolt  *raftboltdb.BoltStore
	snaps *raft.FileSnapshotStore // for the last-snapshot metrics
	// metrics are the latency histograms (metrics.go).
	metrics *metrics

	observer *raft.Observer
	leaderMu sync.Mutex
	leaderCh chan struct{} // closed and replaced on every leader change
	// leaderless is when this node last lost sight of a leader (unix
	// nanoseconds), 0 while one is known. Set at Open (no leader yet).
	leaderless atomic.Int64
	done       chan struct{} // closed by Shutdown once raft stopped

	// Node channel (nil without Config.TLS).
	mux      *mux
	client   *Client
	rpcSrv   *http.Server
	rpcDone  chan struct{} // closed when rpcSrv.Serve returned
	handlers inflight

	// baseCtx ends at the start of Shutdown: it stops the join loop,
	// forwarding retries and RPC handlers.
	baseCtx    context.Context
	cancelBase context.CancelFunc

	hadState   bool          // raft had state at Open
	joined     chan struct{} // see Joined
	joinedOnce sync.Once
	joinDone   chan struct{} // closed when the join loop returned (nil: none)

	shutdownOnce sync.Once
	shutdownErr  error
}

// Open starts raft for f: a raft-boltdb/v2 log and stable store (behind
// a log cache), a file snapshot store and a network transport, all under
// cfg.DataDir/raft. With cfg.Bootstrap and no existing raft state it
// bootstraps a single-voter cluster. It does not wait for a leader (see
// WaitLeader). ctx bounds nothing yet but is checked.
func Open(ctx context.Context, cfg Config, f *fsm.FSM) (*Node, error) {
	if f == nil {
		return nil, errors.New("cluster: open: nil FSM")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("cluster: open: %w", err)
	}
	n := &Node{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "cluster", "node", cfg.NodeID),
		fsm:      f,
		metrics:  newMetrics(),
		leaderCh: make(chan struct{}),
		done:     make(chan struct{}),
		joined:   make(chan struct{}),
	}
	n.leaderless.Store(time.Now().UnixNano())
	n.baseCtx, n.cancelBase = context.WithCancel(context.Background())
	if err := n.open(); err != nil {
		n.cancelBase()
		n.closeStores()
		return nil, err
	}
	n.watchLeader()
	if n.mux != nil {
		n.startRPC()
	}
	n.startJoin()
	return n, nil
}

// open is Open's boot sequence: stores → transport → consistency checks →
// bootstrap → raft.
func (n *Node) open() error {
	hl := newHCLog(n.cfg.Logger, "").(*hclogAdapter)
	dir := filepath.Join(n.cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cluster: open: %w", err)
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{
		Path: filepath.Join(dir, "raft.db"), BoltOptions: boltOptions(5 * time.Second),
	})
	if err != nil {
		return fmt.Errorf("cluster: open raft.db: %w", err)
	}
	n.bolt = bolt
	logs, err := raft.NewLogCache(logCacheSize, bolt)
	if err != nil {
		return fmt.Errorf("cluster: open: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, n.cfg.SnapshotRetain, hl.Named("snapshot"))
	if err != nil {
		return fmt.Errorf("cluster: open snapshots: %w", err)
	}
	if n.trans, err = n.newTransport(hl); err != nil {
		return err
	}

	existing, err := raft.HasExistingState(logs, bolt, snaps)
	if err != nil {
		return fmt.Errorf("cluster: open: %w", err)
	}
	n.hadState = existing
	if !existing && n.fsm.AppliedIndex() > 0 {
		return fmt.Errorf("%w: FSM applied index %d, raft dir %s is empty", ErrStateMismatch, n.fsm.AppliedIndex(), dir)
	}
	restore := n.needsRestore(snaps)
	rc, err := n.cfg.raftConfig(hl, restore)
	if err != nil {
		return err
	}
	if n.cfg.Bootstrap && !existing {
		conf := raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: rc.LocalID, Address: n.trans.LocalAddr(),
		}}}
		if err := raft.BootstrapCluster(rc, logs, bolt, snaps, n.trans, conf); err != nil {
			return fmt.Errorf("cluster: bootstrap: %w", err)
		}
		n.log.Info("bootstrapped a single-voter cluster", "addr", n.trans.LocalAddr())
	}
	n.snaps = snaps
	// timedFSM measures every batch the FSM applies (metrics.go).
	r, err := raft.NewRaft(rc, timedFSM{n.fsm, n.metrics}, logs, bolt, snaps, n.trans)
	if err != nil {
		return fmt.Errorf("cluster: start raft: %w", err)
	}
	n.raft = r
	n.log.Info("raft started", "addr", n.trans.LocalAddr(), "applied", n.fsm.AppliedIndex(), "restore_snapshot", restore)
	return nil
}

func (n *Node) newTransport(hl *hclogAdapter) (raft.Transport, error) {
	tl := hl.Named("transport")
	stream := n.cfg.StreamLayer
	if n.cfg.TLS != nil {
		m, err := newMux(n.cfg.BindAddr, n.cfg.AdvertiseAddr, n.cfg.TLS, n.log)
		if err != nil {
			return nil, err
		}
		n.mux = m
		n.client = NewClient(n.cfg.TLS)
		stream = streamLayer{m.raft}
	}
	if stream != nil {
		return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: stream, MaxPool: transportPool, Timeout: transportTimeout, Logger: tl,
		}), nil
	}
	var adv net.Addr
	if n.cfg.AdvertiseAddr != "" {
		a, err := net.ResolveTCPAddr("tcp", n.cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("cluster: advertise address: %w", err)
		}
		adv = a
	}
	t, err := raft.NewTCPTransportWithLogger(n.cfg.BindAddr, adv, transportPool, transportTimeout, tl)
	if err != nil {
		return nil, fmt.Errorf("cluster: transport: %w", err)
	}
	return t, nil
}

// needsRestore reports whether raft must restore its latest snapshot on
// start: only when the FSM's persistent state is older than it (a wiped or
// discarded badger directory). Otherwise the FSM already holds everything
// the snapshot does and raft only replays the log after it, which the FSM
// skips up to its applied index.
func (n *Node) needsRestore(snaps *raft.FileSnapshotStore) bool {
	list, err := snaps.List()
	if err != nil || len(list) == 0 {
		return false
	}
	_, rc, err := snaps.Open(list[0].ID)
	if err != nil {
		n.log.Warn("cannot read the latest snapshot; restoring on start", "id", list[0].ID, "error", err)
		return true
	}
	defer rc.Close()
	hdr, err := fsm.ReadSnapshotHeader(rc)
	if err != nil {
		n.log.Warn("cannot read the latest snapshot; restoring on start", "id", list[0].ID, "error", err)
		return true
	}
	if applied := n.fsm.AppliedIndex(); applied < hdr.Index {
		n.log.Warn("FSM is older than the latest snapshot; restoring it", "applied", applied, "snapshot_index", hdr.Index)
		return true
	}
	return false
}

// watchLeader turns raft's leader observations into wake-ups for
// WaitLeader.
func (n *Node) watchLeader() {
	ch := make(chan raft.Observation, 16)
	n.observer = raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(n.observer)
	go func() {
		for {
			select {
			case <-ch:
				if id, _ := n.Leader(); id != "" {
					n.leaderless.Store(0)
				} else if n.leaderless.Load() == 0 {
					n.leaderless.Store(time.Now().UnixNano())
				}
				n.leaderMu.Lock()
				close(n.leaderCh)
				n.leaderCh = make(chan struct{})
				n.leaderMu.Unlock()
			case <-n.done:
				return
			}
		}
	}()
}

func (n *Node) leaderChanged() <-chan struct{} {
	n.leaderMu.Lock()
	defer n.leaderMu.Unlock()
	return n.leaderCh
}

// Shutdown stops the join loop and forwarding retries, stops raft, then
// the node channel (RPC server, waiting up to 10 s for running handlers;
// listener; every connection) and closes the transport and the bolt
// store. It is idempotent; the FSM's storage is the caller's to close
// afterwards.
func (n *Node) Shutdown() error {
	n.shutdownOnce.Do(func() {
		n.cancelBase()
		if n.joinDone != nil {
			<-n.joinDone
		}
		var errs []error
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft: %w", err))
		}
		n.raft.DeregisterObserver(n.observer)
		close(n.done)
		if n.rpcSrv != nil {
			idle := n.handlers.close()
			_ = n.rpcSrv.Close()
			<-n.rpcDone
			select {
			case <-idle:
			case <-time.After(10 * time.Second):
				n.log.Error("node channel: RPC handlers still running after shutdown")
			}
		}
		errs = append(errs, n.closeStores())
		if n.client != nil {
			n.client.CloseIdleConnections()
		}
		n.shutdownErr = errors.Join(errs...)
		if n.shutdownErr != nil {
			n.shutdownErr = fmt.Errorf("cluster: shutdown: %w", n.shutdownErr)
		}
		n.log.Info("raft stopped")
	})
	return n.shutdownErr
}

func (n *Node) closeStores() error {
	var errs []error
	if c, ok := n.trans.(interface{ Close() error }); ok {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("transport: %w", err))
		}
	}
	if n.mux != nil {
		if err := n.mux.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("node channel: %w", err))
		}
	}
	if n.bolt != nil {
		if err := n.bolt.Close(); err != nil {
			errs = append(errs, fmt.Errorf("raft.db: %w", err))
		}
	}
	return errors.Join(errs...)
}

// boltOptions are raft.db's bbolt options. The freelist is not written on
// every commit (NoFreelistSync) and is kept as a map: raft appends at the
// end and deletes whole prefixes on compaction, so the freelist grows
// large and syncing it made every append slower as the log aged. bbolt
// rebuilds it by scanning the file on open, which compaction keeps small.
func boltOptions(timeout time.Duration) *bbolt.Options {
	return &bbolt.Options{Timeout: timeout, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType}
}
