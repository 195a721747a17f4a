package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"
)

// MaxCommandSize bounds one encoded command. It keeps every raft entry
// far below the largest transaction the FSM's storage accepts (about
// 600 KiB), so an entry can always be applied.
const MaxCommandSize = 64 << 10

// Config configures a Node. Zero durations and counts take the value in
// DefaultConfig.
type Config struct {
	// NodeID is this server's raft id. Required; stable for the life of
	// the node.
	NodeID string
	// DataDir holds raft's state under DataDir/raft: the bolt log and
	// stable store raft.db, and snapshots/. Required.
	DataDir string
	// BindAddr is the raft transport's listen address, e.g.
	// 127.0.0.1:7374 (":0" picks a port). Ignored when StreamLayer is set.
	BindAddr string
	// AdvertiseAddr is the address peers dial. "" = the bound address
	// (which must then not be unspecified such as 0.0.0.0).
	AdvertiseAddr string
	// Bootstrap makes Open bootstrap a single-voter cluster of this node
	// if there is no existing raft state. Harmless on later starts.
	Bootstrap bool
	// StreamLayer, if set, carries raft's traffic (mTLS is plugged in
	// here). nil = plain TCP on BindAddr.
	StreamLayer raft.StreamLayer
	// Logger receives this package's and raft's logs. nil = slog.Default().
	Logger *slog.Logger

	// Raft timing. The defaults are for a LAN: a failed leader is replaced
	// in well under a second. raft requires LeaderLeaseTimeout <=
	// HeartbeatTimeout <= ElectionTimeout.
	HeartbeatTimeout   time.Duration // default 200ms
	ElectionTimeout    time.Duration // default 200ms
	LeaderLeaseTimeout time.Duration // default 100ms
	CommitTimeout      time.Duration // default 10ms

	SnapshotThreshold uint64        // entries between snapshots; default 8192
	SnapshotInterval  time.Duration // how often to check; default 2m
	TrailingLogs      uint64        // entries kept after a snapshot; default 10240
	SnapshotRetain    int           // snapshots kept on disk; default 2
}

// DefaultConfig returns the defaults used for zero fields.
func DefaultConfig() Config {
	return Config{
		HeartbeatTimeout:   200 * time.Millisecond,
		ElectionTimeout:    200 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond,
		CommitTimeout:      10 * time.Millisecond,
		SnapshotThreshold:  8192,
		SnapshotInterval:   2 * time.Minute,
		TrailingLogs:       10240,
		SnapshotRetain:     2,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	setDur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setDur(&c.HeartbeatTimeout, d.HeartbeatTimeout)
	setDur(&c.ElectionTimeout, d.ElectionTimeout)
	setDur(&c.LeaderLeaseTimeout, d.LeaderLeaseTimeout)
	setDur(&c.CommitTimeout, d.CommitTimeout)
	setDur(&c.SnapshotInterval, d.SnapshotInterval)
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = d.SnapshotThreshold
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = d.TrailingLogs
	}
	if c.SnapshotRetain == 0 {
		c.SnapshotRetain = d.SnapshotRetain
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.NodeID == "":
		return errors.New("cluster: config: NodeID is required")
	case c.DataDir == "":
		return errors.New("cluster: config: DataDir is required")
	case c.StreamLayer == nil && c.BindAddr == "":
		return errors.New("cluster: config: BindAddr is required without a StreamLayer")
	case c.SnapshotRetain < 1:
		return errors.New("cluster: config: SnapshotRetain must be >= 1")
	}
	return nil
}

// raftConfig translates c into raft's configuration and validates it.
func (c Config) raftConfig(logger *hclogAdapter, restoreOnStart bool) (*raft.Config, error) {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.NodeID)
	rc.HeartbeatTimeout = c.HeartbeatTimeout
	rc.ElectionTimeout = c.ElectionTimeout
	rc.LeaderLeaseTimeout = c.LeaderLeaseTimeout
	rc.CommitTimeout = c.CommitTimeout
	rc.SnapshotThreshold = c.SnapshotThreshold
	rc.SnapshotInterval = c.SnapshotInterval
	rc.TrailingLogs = c.TrailingLogs
	rc.Logger = logger.Named("raft")
	// The FSM is persistent and skips applied indexes: restoring the
	// latest snapshot on every start would only rewrite the same state.
	// Open turns it on when the FSM is older than that snapshot.
	rc.NoSnapshotRestoreOnStart = !restoreOnStart
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("cluster: config: %w", err)
	}
	return rc, nil
}
