package cluster

import (
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	descState = prometheus.NewDesc("kmsd_raft_state",
		"Raft state of this node: 1 for the current state, 0 otherwise.", []string{"state"}, nil)
	descTerm = prometheus.NewDesc("kmsd_raft_term",
		"Current raft term.", nil, nil)
	descCommit = prometheus.NewDesc("kmsd_raft_commit_index",
		"Raft commit index known to this node.", nil, nil)
	descApplied = prometheus.NewDesc("kmsd_raft_applied_index",
		"Index of the last log entry applied to this node's state machine.", nil, nil)
	descMembers = prometheus.NewDesc("kmsd_raft_members",
		"Servers in the raft configuration, by suffrage.", []string{"suffrage"}, nil)
	descTolerance = prometheus.NewDesc("kmsd_raft_failure_tolerance",
		"Voters that may fail while a quorum remains.", nil, nil)
)

// Collector returns a prometheus.Collector that reads raft's state on
// every scrape. Register it with the caller's own registry.
func (n *Node) Collector() prometheus.Collector { return collector{n} }

type collector struct{ n *Node }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descTerm, descCommit, descApplied, descMembers, descTolerance} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	r := c.n.raft
	cur := r.State()
	for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		v := 0.0
		if s == cur {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, s.String())
	}
	ch <- prometheus.MustNewConstMetric(descTerm, prometheus.GaugeValue, float64(r.CurrentTerm()))
	ch <- prometheus.MustNewConstMetric(descCommit, prometheus.GaugeValue, float64(r.CommitIndex()))
	ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(c.n.fsm.AppliedIndex()))

	members, tolerance := c.n.members()
	counts := map[string]int{raft.Voter.String(): 0, raft.Nonvoter.String(): 0, raft.Staging.String(): 0}
	for _, m := range members {
		counts[m.Suffrage]++
	}
	for s, v := range counts {
		ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(v), s)
	}
	ch <- prometheus.MustNewConstMetric(descTolerance, prometheus.GaugeValue, float64(tolerance))
}
