package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// attempt is one create sent while measuring a failover.
type attempt struct {
	sent, done time.Time
	status     int
	kind       string
	name       string
}

// failoverTrial is what one leader kill measured.
type failoverTrial struct {
	killed, newLeader string
	election          time.Duration // kill -> a survivor reports being the leader (0: not seen)
	firstWrite        time.Duration // kill -> first create sent after the kill completes OK
	firstSent         time.Duration // kill -> when that create was sent
	afterKill, failed int           // creates sent after the kill; how many failed
	beforeFailed      int           // creates sent before the kill that failed
	kinds             map[string]int
	restart           time.Duration // restart command (until it reported the node ready)
}

// cmdFailover: SIGKILL the leader while creates hammer the other nodes
// every few milliseconds; report the time from the kill to the first
// successful create, then restart the node with --restart.
func cmdFailover(args []string) error {
	fs := flag.NewFlagSet("failover", flag.ContinueOnError)
	opts := clusterFlags(fs)
	trials := fs.Int("trials", 3, "leader kills (more than one needs --restart)")
	interval := fs.Duration("interval", 5*time.Millisecond, "a new create every interval, round-robin over the surviving nodes")
	timeout := fs.Duration("timeout", 30*time.Second, "give up on a trial when no create succeeds within this time after the kill")
	restart := fs.String("restart", "", "shell command that restarts the killed node and waits until it is ready (e.g. \"scripts/dev.sh up\")")
	settle := fs.Duration("settle", 2*time.Second, "pause after a restart before the next kill")
	prefix := fs.String("prefix", "kmsd-bench-failover-"+runID(), "name prefix of the keys created")
	cleanup := fs.Bool("cleanup", true, "delete the created keys afterwards")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o, err := opts()
	if err != nil {
		return fmt.Errorf("failover: %w", err)
	}
	if len(o.pidFiles) != len(o.servers) {
		return errors.New("failover: --pid-files (or KMSD_PID_FILES) must name the pid file of every server")
	}
	if len(o.servers) < 3 {
		return errors.New("failover: needs at least three nodes")
	}
	if *trials > 1 && *restart == "" {
		return errors.New("failover: more than one trial needs --restart")
	}
	ctx, stop := signalContext()
	defer stop()
	ctl := o.client()
	defer ctl.CloseIdleConnections()

	fmt.Printf("failover: %d trial(s); a create every %s round-robin over the surviving nodes, then SIGKILL the leader;\n"+
		"gap = kill -> first successful create among those sent after the kill.\n", *trials, *interval)
	var results []*failoverTrial
	var created, acked []string
	defer func() {
		if !*cleanup || len(created) == 0 {
			return
		}
		cctx := context.Background()
		l, err := findLeader(cctx, ctl, o.servers, 30*time.Second)
		if err != nil {
			fmt.Printf("clean-up skipped (%v): %d keys named %s-* are left\n", err, len(created), *prefix)
			return
		}
		deleteKeys(cctx, o, o.servers[l], created, 2*time.Minute)
	}()
	for t := 1; t <= *trials; t++ {
		if err := waitReady(ctx, ctl, o.servers, 60*time.Second); err != nil {
			return fmt.Errorf("failover: trial %d: %w", t, err)
		}
		leader, err := findLeader(ctx, ctl, o.servers, 30*time.Second)
		if err != nil {
			return fmt.Errorf("failover: trial %d: %w", t, err)
		}
		res, names, ok, err := failoverTrialRun(ctx, o, leader, fmt.Sprintf("%s-%d", *prefix, t), *interval, *timeout)
		created = append(created, names...)
		acked = append(acked, ok...)
		if err != nil {
			return fmt.Errorf("failover: trial %d: %w", t, err)
		}
		if *restart != "" {
			t0 := time.Now()
			cmd := exec.CommandContext(ctx, "bash", "-c", *restart)
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("failover: trial %d: restart %q: %w", t, *restart, err)
			}
			res.restart = time.Since(t0)
		}
		printTrial(t, res)
		results = append(results, res)
		if t < *trials {
			if err := sleepCtx(ctx, *settle); err != nil {
				return err
			}
		}
	}

	fmt.Println()
	fmt.Printf("%-6s %-26s %-26s %10s %12s %10s %10s %9s\n", "trial", "killed leader", "new leader", "elected", "first write", "(sent at)", "failed", "restart")
	var gaps []time.Duration
	for i, r := range results {
		el := "n/a"
		if r.election > 0 {
			el = fmtDur(r.election)
		}
		rs := "n/a"
		if r.restart > 0 {
			rs = r.restart.Round(100 * time.Millisecond).String()
		}
		fmt.Printf("%-6d %-26s %-26s %10s %12s %10s %10s %9s\n", i+1, r.killed, r.newLeader, el,
			fmtDur(r.firstWrite), "+"+fmtDur(r.firstSent), fmt.Sprintf("%d/%d", r.failed, r.afterKill), rs)
		gaps = append(gaps, r.firstWrite)
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	if len(gaps) > 0 {
		fmt.Printf("leader kill -> first successful write: median %s, max %s over %d kill(s)\n",
			fmtDur(gaps[len(gaps)/2]), fmtDur(gaps[len(gaps)-1]), len(gaps))
	}
	fmt.Println("elected = kill -> a surviving node's kmsd_raft_state says leader (polled every ~10ms, so it can trail the first write); " +
		"failed = creates sent after the kill that did not succeed / all sent after the kill; " +
		"restart = the --restart command, until it reported the node ready (includes its own checks).")
	if *restart != "" {
		if err := waitReady(ctx, ctl, o.servers, 60*time.Second); err != nil {
			return fmt.Errorf("failover: %w", err)
		}
		return checkAcked(ctx, o, acked)
	}
	return nil
}

// checkAcked describes every acknowledged key on every node: none of the
// creates that answered 200 may be lost by a leader kill.
func checkAcked(ctx context.Context, o *clusterOpts, names []string) error {
	var mu sync.Mutex
	missing := make(map[string][]string)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, srv := range o.servers {
		c := o.client()
		defer c.CloseIdleConnections()
		for _, n := range names {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				defer cancel()
				if st, kind := send(rctx, c, http.MethodGet, srv+"/v1/key/describe/"+url.PathEscape(n), nil); st != http.StatusOK {
					mu.Lock()
					missing[srv] = append(missing[srv], n+" ("+kind+")")
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if len(missing) == 0 {
		fmt.Printf("acknowledged creates: all %d describe on all %d nodes after the restarts\n", len(names), len(o.servers))
		return nil
	}
	for srv, m := range missing {
		sort.Strings(m)
		fmt.Printf("LOST on %s: %d of %d acknowledged keys, e.g. %s\n", srv, len(m), len(names), m[0])
	}
	return errors.New("failover: acknowledged creates are missing")
}

// failoverTrialRun measures one kill of the leader (index leader).
// It returns the trial, the names of every create it sent and of those
// that were acknowledged (200).
func failoverTrialRun(ctx context.Context, o *clusterOpts, leader int, prefix string, interval, timeout time.Duration) (*failoverTrial, []string, []string, error) {
	pid, err := readPIDFile(o.pidFiles[leader])
	if err != nil {
		return nil, nil, nil, err
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || strings.TrimSpace(string(comm)) != "kmsd" {
		return nil, nil, nil, fmt.Errorf("pid %d from %s is not a running kmsd", pid, o.pidFiles[leader])
	}
	var survivors []string
	for i, s := range o.servers {
		if i != leader {
			survivors = append(survivors, s)
		}
	}
	clients := make([]*http.Client, len(survivors))
	for i := range clients {
		clients[i] = o.client()
		defer clients[i].CloseIdleConnections()
	}

	var (
		mu       sync.Mutex
		attempts []attempt
		killAt   time.Time // zero until the kill
		okAfter  = make(chan struct{})
		okOnce   sync.Once
		inflight sync.WaitGroup
	)
	hammerCtx, stopHammer := context.WithCancel(ctx)
	defer stopHammer()
	reqCtx, cancelReqs := context.WithCancel(ctx)
	defer cancelReqs()
	sem := make(chan struct{}, 128)
	var skipped int
	hammerDone := make(chan struct{})
	go func() {
		defer close(hammerDone)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-hammerCtx.Done():
				return
			case <-tick.C:
			}
			select {
			case sem <- struct{}{}:
			default:
				skipped++
				continue
			}
			i := n % len(survivors)
			name := prefix + "-" + strconv.Itoa(n)
			inflight.Go(func() {
				defer func() { <-sem }()
				rctx, cancel := context.WithTimeout(reqCtx, 16*time.Second)
				defer cancel()
				a := attempt{sent: time.Now(), name: name}
				a.status, a.kind = send(rctx, clients[i], http.MethodPost, survivors[i]+"/v1/key/create/"+url.PathEscape(name), nil)
				a.done = time.Now()
				mu.Lock()
				attempts = append(attempts, a)
				k := killAt
				mu.Unlock()
				if a.status == http.StatusOK && !k.IsZero() && !a.sent.Before(k) {
					okOnce.Do(func() { close(okAfter) })
				}
			})
		}
	}()
	names := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := make([]string, 0, len(attempts))
		for _, a := range attempts {
			out = append(out, a.name)
		}
		return out
	}
	finish := func() {
		stopHammer()
		<-hammerDone
		waited := make(chan struct{})
		go func() { inflight.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(20 * time.Second):
			cancelReqs()
			<-waited
		}
	}

	// Writes must work before the kill.
	if err := sleepCtx(ctx, 300*time.Millisecond); err != nil {
		finish()
		return nil, names(), nil, err
	}
	mu.Lock()
	okBefore := 0
	for _, a := range attempts {
		if a.status == http.StatusOK {
			okBefore++
		}
	}
	mu.Unlock()
	if okBefore == 0 {
		finish()
		return nil, names(), nil, errors.New("no create succeeded before the kill")
	}

	// Watch the survivors' raft state from the kill on.
	type seen struct {
		at     time.Time
		server string
	}
	elected := make(chan seen, 1)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	ctl := o.client()
	defer ctl.CloseIdleConnections()

	mu.Lock()
	killAt = time.Now()
	err = syscall.Kill(pid, syscall.SIGKILL)
	mu.Unlock()
	if err != nil {
		finish()
		return nil, names(), nil, fmt.Errorf("kill %d: %w", pid, err)
	}
	go func() {
		for {
			for _, s := range survivors {
				if v, err := metric(watchCtx, ctl, s, "kmsd_raft_state"); err == nil && v == raftLeader {
					elected <- seen{time.Now(), s}
					return
				}
			}
			if sleepCtx(watchCtx, 10*time.Millisecond) != nil {
				return
			}
		}
	}()

	res := &failoverTrial{killed: o.servers[leader], kinds: make(map[string]int)}
	to := time.NewTimer(timeout)
	defer to.Stop()
	select {
	case <-okAfter:
	case <-to.C:
	case <-ctx.Done():
	}
	// A little more load, to count what fails right after the election.
	_ = sleepCtx(ctx, 300*time.Millisecond)
	finish()
	select {
	case s := <-elected:
		res.election, res.newLeader = s.at.Sub(killAt), s.server
	default:
		if l, err := findLeader(ctx, ctl, survivors, 5*time.Second); err == nil {
			res.newLeader = survivors[l]
		}
	}
	stopWatch()

	mu.Lock()
	defer mu.Unlock()
	var first *attempt
	var acked []string
	for i := range attempts {
		a := &attempts[i]
		if a.status == http.StatusOK {
			acked = append(acked, a.name)
		}
		if a.sent.Before(killAt) {
			if a.status != http.StatusOK {
				res.beforeFailed++
				if len(res.kinds) < maxErrorKinds {
					res.kinds["(sent before the kill) "+a.kind]++
				}
			}
			continue
		}
		res.afterKill++
		if a.status != http.StatusOK {
			res.failed++
			if len(res.kinds) < maxErrorKinds {
				res.kinds[a.kind]++
			}
			continue
		}
		if first == nil || a.done.Before(first.done) {
			first = a
		}
	}
	all := make([]string, 0, len(attempts))
	for _, a := range attempts {
		all = append(all, a.name)
	}
	if first == nil {
		return nil, all, acked, fmt.Errorf("no create succeeded within %s after killing the leader %s", timeout, o.servers[leader])
	}
	res.firstWrite, res.firstSent = first.done.Sub(killAt), first.sent.Sub(killAt)
	if skipped > 0 {
		res.kinds[fmt.Sprintf("(not sent: %d ticks skipped, 128 creates in flight)", skipped)] = 0
	}
	return res, all, acked, nil
}

func printTrial(t int, r *failoverTrial) {
	fmt.Printf("trial %d: killed the leader %s; first successful write %s after the kill (sent at +%s)",
		t, r.killed, fmtDur(r.firstWrite), fmtDur(r.firstSent))
	if r.election > 0 {
		fmt.Printf("; %s reported leader after %s", r.newLeader, fmtDur(r.election))
	} else if r.newLeader != "" {
		fmt.Printf("; new leader %s", r.newLeader)
	}
	fmt.Printf("; %d of %d creates sent after the kill failed", r.failed, r.afterKill)
	if r.beforeFailed > 0 {
		fmt.Printf(" (and %d sent before it)", r.beforeFailed)
	}
	if r.restart > 0 {
		fmt.Printf("; restart took %s", r.restart.Round(100*time.Millisecond))
	}
	fmt.Println()
	kinds := make([]string, 0, len(r.kinds))
	for k := range r.kinds {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		if r.kinds[k] > 0 {
			fmt.Printf("  error x%d: %s\n", r.kinds[k], k)
		} else {
			fmt.Printf("  %s\n", k)
		}
	}
}
