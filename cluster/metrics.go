package cluster

import (
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
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
)

// Collector returns a prometheus.Collector that reads raft's state on
// every scrape. Register it with the caller's own registry.
func (n *Node) Collector() prometheus.Collector { return collector{n} }

type collector struct{ n *Node }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descLeader, descTerm, descCommit, descApplied, descMembers, descVoters, descTolerance} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	r := c.n.raft
	cur := r.State() // raft.RaftState: Follower=0, Candidate=1, Leader=2, Shutdown=3
	leader := 0.0
	if cur == raft.Leader {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, float64(cur))
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(descTerm, prometheus.GaugeValue, float64(r.CurrentTerm()))
	ch <- prometheus.MustNewConstMetric(descCommit, prometheus.GaugeValue, float64(r.CommitIndex()))
	ch <- prometheus.MustNewConstMetric(descApplied, prometheus.GaugeValue, float64(c.n.fsm.AppliedIndex()))

	members, tolerance := c.n.members()
	voters := 0
	for _, m := range members {
		if m.Suffrage == raft.Voter.String() {
			voters++
		}
	}
	ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(len(members)))
	ch <- prometheus.MustNewConstMetric(descVoters, prometheus.GaugeValue, float64(voters))
	ch <- prometheus.MustNewConstMetric(descTolerance, prometheus.GaugeValue, float64(tolerance))
}
