package cluster

import (
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/fsm"
)

var (
	// Every family has exactly one sample and no labels: kms-go's
	// Metrics() rejects any /v1/metrics family with more than one.
	descState = prometheus.NewDesc("kmsd_raft_state",
		"Raft state of this node: 0 follower, 1 candidate, 2 leader, 3 shutdown.", nil, nil)
	descLeader = prometheus.NewDesc("kmsd_raft_leader",
		"1 if this node is the raft leader, 0 otherwise.", nil, nil)
	descTerm = prometheus.NewDesc("kmsd_raft_term",
		"Current raft term.", nil, nil)
	descCommit = prometheus.NewDesc("kmsd_raft_commit_index",
		"Raft commit index known to this node.", nil, nil)
	descApplied = prometheus.NewDesc("kmsd_raft_applied_index",
		"Index of the last log entry applied to this node's state machine.", nil, nil)
	descMembers = prometheus.NewDesc("kmsd_raft_members",
		"Servers in the raft configuration.", nil, nil)
	descVoters = prometheus.NewDesc("kmsd_raft_voters",
		"Voting servers in the raft configuration.", nil, nil)
	descTolerance = prometheus.NewDesc("kmsd_raft_failure_tolerance",
		"Voters that may fail while a quorum remains.", nil, nil)
	descSnapIndex = prometheus.NewDesc("kmsd_raft_last_snapshot_index",
		"Last log index covered by this node's latest raft snapshot (0: none).", nil, nil)
	descSnapTime = prometheus.NewDesc("kmsd_raft_last_snapshot_timestamp_seconds",
		"Unix time at which this node's latest raft snapshot was taken (0: none).", nil, nil)
)

// Histogram buckets: raft commits take a disk sync and a network round
// trip (0.5 ms on a fast LAN up to seconds under trouble); an FSM apply
// is one storage transaction without fsync (tens of µs).
var (
	raftBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	fsmBuckets  = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
)

// metrics are the latencies the Node measures itself. Each histogram is
// one unlabelled family.
type metrics struct {
	commit  prometheus.Histogram // raft.Apply → future done, on the leader
	forward prometheus.Histogram // forwarded apply round trip, on a follower
	apply   prometheus.Histogram // one FSM ApplyBatch call
	entries prometheus.Counter   // entries passed to the FSM
}

func newMetrics() *metrics {
	return &metrics{
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kmsd_raft_commit_duration_seconds",
			Help: "On the leader: time from raft.Apply of a write to its future's completion " +
				"(enqueue, log append with fsync, replication to a quorum, commit, FSM apply on the leader). " +
				"Successful writes only, including those forwarded by followers.",
			Buckets: raftBuckets,
		}),
		forward: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kmsd_raft_forward_duration_seconds",
			Help: "On a follower: round trip of a write forwarded to the leader over the node channel " +
				"(the leader's commit plus the network). Successful forwards only; retries are separate samples.",
			Buckets: raftBuckets,
		}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kmsd_fsm_apply_duration_seconds",
			Help: "Time the state machine took for one batch of committed entries " +
				"(one storage transaction; see kmsd_fsm_applied_entries_total for the entries).",
			Buckets: fsmBuckets,
		}),
		entries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmsd_fsm_applied_entries_total",
			Help: "Committed command and configuration entries passed to the state machine by raft.",
		}),
	}
}

// timedFSM is the FSM raft drives: it times every batch. Snapshot and
// Restore are *fsm.FSM's own.
type timedFSM struct {
	*fsm.FSM
	m *metrics
}

// Apply is not used by raft (the FSM batches) but times the same way.
func (t timedFSM) Apply(l *raft.Log) any { return t.ApplyBatch([]*raft.Log{l})[0] }

func (t timedFSM) ApplyBatch(logs []*raft.Log) []any {
	start := time.Now()
	res := t.FSM.ApplyBatch(logs)
	t.m.apply.Observe(time.Since(start).Seconds())
	t.m.entries.Add(float64(len(logs)))
	return res
}

// Collector returns a prometheus.Collector that reads raft's state on
// every scrape and exports the node's latency histograms. Register it
// with the caller's own registry.
func (n *Node) Collector() prometheus.Collector { return collector{n} }

type collector struct{ n *Node }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descLeader, descTerm, descCommit, descApplied, descMembers, descVoters, descTolerance, descSnapIndex, descSnapTime} {
		ch <- d
	}
	c.n.metrics.commit.Describe(ch)
	c.n.metrics.forward.Describe(ch)
	c.n.metrics.apply.Describe(ch)
	c.n.metrics.entries.Describe(ch)
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	r := c.n.raft
	cur := r.State() // raft.RaftState: Follower=0, Candidate=1, Leader=2, Shutdown=3
	leader := 0.0
	if cur == raft.Leader {
		leader = 1
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	gauge(descState, float64(cur))
	gauge(descLeader, leader)
	gauge(descTerm, float64(r.CurrentTerm()))
	gauge(descCommit, float64(r.CommitIndex()))
	gauge(descApplied, float64(c.n.fsm.AppliedIndex()))

	members, tolerance := c.n.members()
	voters := 0
	for _, m := range members {
		if m.Suffrage == raft.Voter.String() {
			voters++
		}
	}
	gauge(descMembers, float64(len(members)))
	gauge(descVoters, float64(voters))
	gauge(descTolerance, float64(tolerance))

	index, at := c.n.lastSnapshot()
	ts := 0.0
	if !at.IsZero() {
		ts = float64(at.UnixMilli()) / 1e3
	}
	gauge(descSnapIndex, float64(index))
	gauge(descSnapTime, ts)

	c.n.metrics.commit.Collect(ch)
	c.n.metrics.forward.Collect(ch)
	c.n.metrics.apply.Collect(ch)
	c.n.metrics.entries.Collect(ch)
}

// lastSnapshot returns the index and creation time of the newest raft
// snapshot in this node's snapshot store (0 and the zero time: none).
// It reads the store's metadata files (SnapshotRetain of them).
func (n *Node) lastSnapshot() (uint64, time.Time) {
	if n.snaps == nil {
		return 0, time.Time{}
	}
	list, err := n.snaps.List()
	if err != nil || len(list) == 0 {
		return 0, time.Time{}
	}
	return list[0].Index, snapshotTime(list[0].ID)
}

// snapshotTime reads the creation time from a FileSnapshotStore id,
// "<term>-<index>-<unix milliseconds>" (zero if it is not one).
func snapshotTime(id string) time.Time {
	parts := strings.Split(id, "-")
	if len(parts) != 3 {
		return time.Time{}
	}
	ms, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}
