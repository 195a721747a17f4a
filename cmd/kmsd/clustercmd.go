package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kmsd/kmsd/cluster"
	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/storage"
)

// Operator commands for the cluster. The online ones talk to the local
// node over the node channel: they dial cluster.advertise with the
// node's own certificate (cluster.tls), so only someone who can read the
// node's key can run them. `cluster recover` works on the data directory
// of a stopped node.

const clusterUsage = `usage:
  kmsd cluster status [--json] --config FILE
  kmsd cluster remove NODE --config FILE
  kmsd cluster transfer [NODE] --config FILE
  kmsd cluster recover --config FILE [--member ID=ADDR ...]   (the node must be stopped)
`

func runCluster(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, clusterUsage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "status":
		return clusterStatus(ctx, os.Stdout, args[1:])
	case "remove":
		return clusterRemove(ctx, args[1:])
	case "transfer":
		return clusterTransfer(ctx, args[1:])
	case "recover":
		return clusterRecover(ctx, args[1:])
	case "help", "-h", "--help":
		fmt.Print(clusterUsage)
		return nil
	default:
		fmt.Fprintf(os.Stderr, "kmsd cluster: unknown subcommand %q\n\n%s", args[0], clusterUsage)
		return flag.ErrHelp
	}
}

// parseInterleaved parses flags that may come before, between or after
// the positional arguments (`remove NODE --config F`), which the flag
// package alone stops at. Everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		// flag.Parse consumed a "--" iff the argument before rest is one.
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// onlineFlags are the flags of every command that talks to the node.
type onlineFlags struct {
	config  string
	timeout time.Duration
}

func (o *onlineFlags) register(fs *flag.FlagSet, timeout time.Duration) {
	fs.StringVar(&o.config, "config", "", "the node's config file (required)")
	fs.DurationVar(&o.timeout, "timeout", timeout, "give up after this long")
}

// dial loads the config and returns a client for the node channel and
// the local node's cluster address.
func (o *onlineFlags) dial(cmd string) (*cluster.Client, string, error) {
	if o.config == "" {
		return nil, "", fmt.Errorf("%s: --config is required", cmd)
	}
	cfg, err := loadConfig(o.config)
	if err != nil {
		return nil, "", err
	}
	ctls, err := buildClusterTLS(cfg)
	if err != nil {
		return nil, "", err
	}
	return cluster.NewClient(func() *tls.Config { return ctls.Clone() }), cfg.Cluster.Advertise, nil
}

func clusterStatus(ctx context.Context, w io.Writer, args []string) error {
	fs := flag.NewFlagSet("cluster status", flag.ContinueOnError)
	var o onlineFlags
	o.register(fs, 15*time.Second)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return fmt.Errorf("cluster status: unexpected argument %q", pos[0])
	}
	c, addr, err := o.dial("cluster status")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	st, err := c.Status(ctx, addr)
	if err != nil {
		return fmt.Errorf("cluster status: %s: %w", addr, err)
	}
	if *asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(statusJSONOf(st))
	}
	printStatus(w, st)
	return nil
}

// statusJSON is the stable JSON shape of `cluster status --json`.
type statusJSON struct {
	Node             string       `json:"node"`
	State            string       `json:"state"`
	Leader           string       `json:"leader"`
	LeaderAddr       string       `json:"leader_addr"`
	Term             uint64       `json:"term"`
	CommitIndex      uint64       `json:"commit_index"`
	AppliedIndex     uint64       `json:"applied_index"`
	LastLogIndex     uint64       `json:"last_log_index"`
	Voters           int          `json:"voters"`
	FailureTolerance int          `json:"failure_tolerance"`
	Members          []memberJSON `json:"members"`
}

type memberJSON struct {
	ID           string `json:"id"`
	Addr         string `json:"addr"`
	Suffrage     string `json:"suffrage"`
	Leader       bool   `json:"leader"`
	Reachable    bool   `json:"reachable"`
	State        string `json:"state,omitempty"`
	AppliedIndex uint64 `json:"applied_index"`
	Error        string `json:"error,omitempty"`

	// Health is one word: "ready", "degraded" (ready, but a check is
	// degraded), "unready", "not-live", "unreachable", or "ok" for a
	// reachable member that sent no health report (an older kmsd).
	Health string `json:"health"`
	// Ready, Live and Status (the worst check: ok, degraded, fail) come
	// from the member's health report; absent without one.
	Ready  *bool  `json:"ready,omitempty"`
	Live   *bool  `json:"live,omitempty"`
	Status string `json:"status,omitempty"`
	// Checks are the member's checks that are not OK.
	Checks []checkJSON `json:"checks,omitempty"`
}

type checkJSON struct {
	Name     string `json:"name"`
	Status   string `json:"status"` // degraded or fail
	Message  string `json:"message,omitempty"`
	Liveness bool   `json:"liveness,omitempty"`
}

// healthWord summarises a member's health for the HEALTH column.
func healthWord(h cluster.Health) string {
	switch {
	case !h.Reachable:
		return "unreachable"
	case h.Status == "":
		return "ok"
	case !h.Live:
		return "not-live"
	case !h.Ready:
		return "unready"
	case h.Status != "ok":
		return "degraded"
	}
	return "ready"
}

func memberJSONOf(m cluster.Member, leader string) memberJSON {
	h := m.Health
	mj := memberJSON{
		ID: m.ID, Addr: m.Addr, Suffrage: m.Suffrage, Leader: m.ID == leader,
		Reachable: h.Reachable, State: h.State, AppliedIndex: h.Applied, Error: h.Err,
		Health: healthWord(h), Status: h.Status,
	}
	if h.Status != "" {
		mj.Ready, mj.Live = &h.Ready, &h.Live
	}
	for _, c := range h.Failing {
		mj.Checks = append(mj.Checks, checkJSON{Name: c.Name, Status: c.Status.String(), Message: c.Message, Liveness: c.Liveness})
	}
	return mj
}

func statusJSONOf(st cluster.Status) statusJSON {
	out := statusJSON{
		Node: st.NodeID, State: st.State, Leader: st.Leader, LeaderAddr: st.LeaderAddr,
		Term: st.Term, CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex,
		LastLogIndex: st.LastLogIndex, FailureTolerance: st.FailureTolerance,
		Members: []memberJSON{},
	}
	for _, m := range st.Members {
		if m.Suffrage == "Voter" {
			out.Voters++
		}
		out.Members = append(out.Members, memberJSONOf(m, st.Leader))
	}
	return out
}

func printStatus(w io.Writer, st cluster.Status) {
	j := statusJSONOf(st)
	leader := "none (no quorum, or an election is running)"
	if j.Leader != "" {
		leader = j.Leader + " (" + j.LeaderAddr + ")"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "node\t%s (%s)\n", j.Node, strings.ToLower(j.State))
	fmt.Fprintf(tw, "leader\t%s\n", leader)
	fmt.Fprintf(tw, "term\t%d\n", j.Term)
	fmt.Fprintf(tw, "commit index\t%d\n", j.CommitIndex)
	fmt.Fprintf(tw, "applied index\t%d\n", j.AppliedIndex)
	fmt.Fprintf(tw, "failure tolerance\t%d of %d voters\n", j.FailureTolerance, j.Voters)
	tw.Flush()
	fmt.Fprintln(w)
	// BEHIND compares applied indexes with the most advanced reachable
	// member, not with the commit index: raft commits entries the FSM
	// never sees (the no-op of every new term), so commit - applied is
	// not a lag.
	var most uint64
	for _, m := range j.Members {
		if m.Reachable {
			most = max(most, m.AppliedIndex)
		}
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tSUFFRAGE\tHEALTH\tSTATE\tAPPLIED\tBEHIND\tERROR")
	for _, m := range j.Members {
		id := m.ID
		if m.Leader {
			id += " *"
		}
		state, applied, behind := strings.ToLower(m.State), strconv.FormatUint(m.AppliedIndex, 10), strconv.FormatUint(most-m.AppliedIndex, 10)
		if !m.Reachable {
			state, applied, behind = "-", "-", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, m.Addr, m.Suffrage, m.Health, state, applied, behind, m.Error)
	}
	tw.Flush()
	printChecks(w, j.Members)
}

// printChecks lists the members' checks that are not OK.
func printChecks(w io.Writer, members []memberJSON) {
	n := 0
	for _, m := range members {
		n += len(m.Checks)
	}
	if n == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tCHECK\tSTATUS\tMESSAGE")
	for _, m := range members {
		for _, c := range m.Checks {
			name := c.Name
			if c.Liveness {
				name += " (liveness)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.ID, name, c.Status, c.Message)
		}
	}
	tw.Flush()
}

func clusterRemove(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("cluster remove", flag.ContinueOnError)
	var o onlineFlags
	o.register(fs, 30*time.Second)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] == "" {
		return errors.New("cluster remove: want exactly one NODE id")
	}
	c, addr, err := o.dial("cluster remove")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := c.Remove(ctx, addr, pos[0]); err != nil {
		return fmt.Errorf("cluster remove %s: %w", pos[0], err)
	}
	fmt.Printf("kmsd: removed %s from the cluster\n", pos[0])
	return nil
}

func clusterTransfer(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("cluster transfer", flag.ContinueOnError)
	var o onlineFlags
	o.register(fs, 30*time.Second)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return errors.New("cluster transfer: want at most one NODE id")
	}
	target := ""
	if len(pos) == 1 {
		target = pos[0]
	}
	c, addr, err := o.dial("cluster transfer")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := c.Transfer(ctx, addr, target); err != nil {
		return fmt.Errorf("cluster transfer: %w", err)
	}
	if st, err := c.Status(ctx, addr); err == nil && st.Leader != "" {
		target = st.Leader
	} else if target == "" {
		target = "another voter"
	}
	fmt.Printf("kmsd: leadership transferred to %s\n", target)
	return nil
}

// memberList is the repeatable --member ID=ADDR flag.
type memberList []cluster.Member

func (m *memberList) String() string {
	var s []string
	for _, x := range *m {
		s = append(s, x.ID+"="+x.Addr)
	}
	return strings.Join(s, ",")
}

func (m *memberList) Set(v string) error {
	id, addr, ok := strings.Cut(v, "=")
	if !ok || id == "" || addr == "" {
		return fmt.Errorf("want ID=HOST:PORT, got %q", v)
	}
	if _, _, err := splitHostPort(addr); err != nil {
		return fmt.Errorf("%q: %w", v, err)
	}
	for _, x := range *m {
		if x.ID == id {
			return fmt.Errorf("member %q given twice", id)
		}
	}
	*m = append(*m, cluster.Member{ID: id, Addr: addr, Suffrage: "Voter"})
	return nil
}

// clusterRecover is the way out when quorum is lost for good: on a
// stopped node, it rewrites raft's configuration to the given members
// (default: this node alone) through raft.RecoverCluster. Run it on every
// surviving node with the same --member list, then start them.
func clusterRecover(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("cluster recover", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "the node's config file (required)")
	var members memberList
	fs.Var(&members, "member", "a member of the recovered cluster as ID=HOST:PORT (repeatable; default: this node only)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return fmt.Errorf("cluster recover: unexpected argument %q", pos[0])
	}
	if *cfgPath == "" {
		return errors.New("cluster recover: --config is required")
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	self := false
	for _, m := range members {
		if m.ID == cfg.Cluster.NodeID {
			self = true
		}
	}
	if len(members) == 0 {
		members = memberList{{ID: cfg.Cluster.NodeID, Addr: cfg.Cluster.Advertise, Suffrage: "Voter"}}
	} else if !self {
		return fmt.Errorf("cluster recover: the --member list must include this node (%s)", cfg.Cluster.NodeID)
	}
	// The node must be stopped: its ports must be free (badger's directory
	// lock below is the second guard).
	for _, a := range []string{cfg.Cluster.Address, cfg.Address} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("cluster recover: %s is in use: stop this node first (%w)", a, err)
		}
		ln.Close()
	}
	db, err := storage.Open(storage.Options{Dir: filepath.Join(cfg.DataDir, "state"), DropIncompleteRestore: true})
	if err != nil {
		return fmt.Errorf("cluster recover: %w (is the node still running?)", err)
	}
	defer db.Close()
	f, err := fsm.New(db, fsm.Config{TempDir: filepath.Join(cfg.DataDir, "tmp")})
	if err != nil {
		return fmt.Errorf("cluster recover: %w", err)
	}
	if err := cluster.Recover(ctx, cluster.Config{
		NodeID:        cfg.Cluster.NodeID,
		DataDir:       filepath.Join(cfg.DataDir, "raft"),
		BindAddr:      cfg.Cluster.Address,
		AdvertiseAddr: cfg.Cluster.Advertise,
	}, f, members); err != nil {
		return fmt.Errorf("cluster recover: %w", err)
	}
	fmt.Printf("kmsd: raft configuration of %s rewritten to %s; start the node(s) now\n", cfg.Cluster.NodeID, members.String())
	return nil
}
