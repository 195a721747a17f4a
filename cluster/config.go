package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kmsd/kmsd/health"
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
	// StreamLayer, if set, carries raft's traffic (a custom transport for
	// tests). nil = the node channel on BindAddr (TLS set) or plain TCP.
	// Exclusive with TLS.
	StreamLayer raft.StreamLayer

	// TLS returns the node channel's TLS configuration: the node
	// certificate (Certificates, or GetCertificate and/or
	// GetClientCertificate; the certificate needs serverAuth and
	// clientAuth) and the cluster CA in RootCAs and ClientCAs (one of them
	// is enough: it fills the other). It is called for every new
	// connection, so a reloaded certificate takes effect at once; the
	// result is cloned, never modified. The package enforces TLS 1.3, a
	// verified client certificate and its ALPN protocols.
	//
	// nil = raft over plain TCP and no node channel: no RPC, so no write
	// forwarding, no follower read barrier and no join (old unit tests).
	TLS func() *tls.Config
	// Peers are the node-channel addresses of the cluster's members, the
	// same list on every node. A node that starts without raft state and
	// without Bootstrap asks them (its own AdvertiseAddr is skipped) to add
	// it, retrying with backoff until it is a member or shuts down.
	// Requires TLS.
	Peers []string
	// RPC are extra internal endpoints served on the node channel under
	// ExtPrefix ("/cluster/v1/ext/"). A key is the path ("rek" or
	// "/cluster/v1/ext/rek"), optionally preceded by a method and a space
	// ("POST rek"). Request bodies are limited to 1 MiB; the request's
	// context ends with the caller's deadline (at most a minute) or at
	// Shutdown. Requires TLS.
	RPC map[string]http.Handler
	// Logger receives this package's and raft's logs. nil = slog.Default().
	Logger *slog.Logger
	// Health returns this node's health report. It is sent with the
	// node's status on the node channel, so ClusterStatus (and `kmsd
	// cluster status`) shows every member's health. It must honour ctx
	// (ClusterStatus bounds each member's answer to about a second) and
	// must not call ClusterStatus. nil = members report no health.
	Health func(ctx context.Context) health.Report

	// Raft timing. The defaults are for a LAN: a failed leader is replaced
	// in well under a second. raft requires LeaderLeaseTimeout <=
	// HeartbeatTimeout <= ElectionTimeout.
	HeartbeatTimeout   time.Duration // default 200ms
	ElectionTimeout    time.Duration // default 200ms
	LeaderLeaseTimeout time.Duration // default 100ms
	CommitTimeout      time.Duration // default 10ms

	// LeaderWait bounds how long a write or a follower read barrier waits
	// for a leader to be elected once none is known (default 3s). An
	// election takes well under a second; a node that has had no leader
	// for longer has most likely lost quorum and answers ErrNoLeader at
	// once, so clients move to another node instead of hanging.
	LeaderWait time.Duration

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
		LeaderWait:         3 * time.Second,
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
	setDur(&c.LeaderWait, d.LeaderWait)
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
	case c.TLS != nil && c.StreamLayer != nil:
		return errors.New("cluster: config: TLS and StreamLayer are exclusive")
	case c.TLS == nil && (len(c.Peers) > 0 || len(c.RPC) > 0):
		return errors.New("cluster: config: Peers and RPC need the node channel (TLS)")
	}
	for _, p := range c.Peers {
		if _, _, err := net.SplitHostPort(p); err != nil {
			return fmt.Errorf("cluster: config: peer %q: %w", p, err)
		}
	}
	for k, h := range c.RPC {
		if h == nil {
			return fmt.Errorf("cluster: config: RPC endpoint %q: nil handler", k)
		}
		if _, err := extPattern(k); err != nil {
			return err
		}
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
