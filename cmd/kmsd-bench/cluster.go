package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The three-node benchmarks: create throughput (spread over every node vs
// the leader only), generate/decrypt against one node vs all nodes, and
// the write gap after the leader is killed. They talk to a running
// cluster (scripts/dev.sh) with the admin API key.

// clusterOpts are the flags every cluster benchmark shares.
type clusterOpts struct {
	servers  []string
	pidFiles []string
	cert     tls.Certificate
	pool     *x509.CertPool
}

// clusterFlags registers the shared flags on fs; the returned function
// parses their values after fs.Parse.
func clusterFlags(fs *flag.FlagSet) func() (*clusterOpts, error) {
	servers := fs.String("servers", os.Getenv("KES_SERVER"), "the cluster's API endpoints, comma-separated (default $KES_SERVER)")
	apiKey := fs.String("api-key", os.Getenv("KES_API_KEY"), "admin API key (default $KES_API_KEY)")
	ca := fs.String("ca", os.Getenv("KES_CA"), "CA certificate of the nodes (default $KES_CA)")
	pidFiles := fs.String("pid-files", os.Getenv("KMSD_PID_FILES"), "pid files of the nodes, comma-separated, in the order of --servers (default $KMSD_PID_FILES)")
	return func() (*clusterOpts, error) {
		o := &clusterOpts{servers: splitList(*servers), pidFiles: splitList(*pidFiles)}
		for i, s := range o.servers {
			o.servers[i] = strings.TrimRight(s, "/")
		}
		if len(o.servers) == 0 || *apiKey == "" {
			return nil, errors.New("--servers and --api-key (or KES_SERVER and KES_API_KEY) are required")
		}
		if len(o.pidFiles) > 0 && len(o.pidFiles) != len(o.servers) {
			return nil, fmt.Errorf("%d pid files for %d servers", len(o.pidFiles), len(o.servers))
		}
		var err error
		if o.cert, err = clientCertificate(*apiKey); err != nil {
			return nil, err
		}
		if o.pool, err = loadCAPool(*ca); err != nil {
			return nil, err
		}
		return o, nil
	}
}

// splitList splits a comma/space separated list.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

// pids reads the pid files; a missing one gives no pid at all (CPU and
// memory are then not reported), with a note on stderr.
func (o *clusterOpts) pids() []int {
	var out []int
	for _, f := range o.pidFiles {
		pid, err := readPIDFile(f)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kmsd-bench: %v: server CPU and memory will not be reported\n", err)
			return nil
		}
		out = append(out, pid)
	}
	return out
}

// client returns an HTTP/2 client for control requests (metrics, ready,
// delete).
func (o *clusterOpts) client() *http.Client {
	return newHTTPClient(&loadConfig{RootCAs: o.pool, ClientCert: o.cert, HTTP: 2})
}

// send does one request and returns the status (0 on a transport error)
// and, when it is not 200, a short description.
func send(ctx context.Context, c *http.Client, method, target string, body []byte) (int, string) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := c.Do(req)
	if err != nil {
		msg := err.Error()
		if len(msg) > 160 {
			msg = msg[:160]
		}
		return 0, msg
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusOK {
		return http.StatusOK, ""
	}
	return resp.StatusCode, (&apiError{Status: resp.StatusCode, Message: errorMessage(b)}).Error()
}

// metric reads one sample of a single-sample family from /v1/metrics.
func metric(ctx context.Context, c *http.Client, server, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, server+"/v1/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s/v1/metrics: HTTP %d", server, resp.StatusCode)
	}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) >= 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s/v1/metrics: no %s", server, name)
}

// raftLeader is kmsd_raft_state's value for a leader.
const raftLeader = 2

// findLeader polls kmsd_raft_state on every server until exactly one is
// the leader, and returns its index.
func findLeader(ctx context.Context, c *http.Client, servers []string, within time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last error
	for {
		var leaders []int
		for i, s := range servers {
			v, err := metric(ctx, c, s, "kmsd_raft_state")
			if err != nil {
				last = err
				continue
			}
			if v == raftLeader {
				leaders = append(leaders, i)
			}
		}
		if len(leaders) == 1 {
			return leaders[0], nil
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			if last == nil {
				last = fmt.Errorf("%d nodes report being the leader", len(leaders))
			}
			return -1, fmt.Errorf("no single leader within %s: %w", within, last)
		}
	}
}

// waitReady polls GET /v1/ready on every server until all answer 200.
func waitReady(ctx context.Context, c *http.Client, servers []string, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		var notReady []string
		for _, s := range servers {
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			st, kind := send(rctx, c, http.MethodGet, s+"/v1/ready", nil)
			rcancel()
			if st != http.StatusOK {
				notReady = append(notReady, s+" ("+kind+")")
			}
		}
		if len(notReady) == 0 {
			return nil
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return fmt.Errorf("not ready within %s: %s", within, strings.Join(notReady, ", "))
		}
	}
}

// deleteKeys deletes names through server with a few parallel clients,
// bounded by within. A key that does not exist (a create that failed)
// counts as missing, not as a failure.
func deleteKeys(ctx context.Context, o *clusterOpts, server string, names []string, within time.Duration) {
	if len(names) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	const workers = 32
	var mu sync.Mutex
	var deleted, missing, failed int
	var firstErr string
	work := make(chan string)
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		c := newHTTPClient(&loadConfig{RootCAs: o.pool, ClientCert: o.cert, HTTP: 2})
		wg.Go(func() {
			defer c.CloseIdleConnections()
			for name := range work {
				st, kind := send(ctx, c, http.MethodDelete, server+"/v1/key/delete/"+url.PathEscape(name), nil)
				mu.Lock()
				switch {
				case st == http.StatusOK:
					deleted++
				case st == http.StatusNotFound:
					missing++
				default:
					failed++
					if firstErr == "" {
						firstErr = kind
					}
				}
				mu.Unlock()
			}
		})
	}
loop:
	for _, n := range names {
		select {
		case work <- n:
		case <-ctx.Done():
			break loop
		}
	}
	close(work)
	wg.Wait()
	d := time.Since(start)
	fmt.Printf("clean-up: deleted %d of %d benchmark keys through %s in %s (%.0f deletes/s, %d workers); %d did not exist",
		deleted, len(names), server, d.Round(time.Millisecond), float64(deleted)/d.Seconds(), workers, missing)
	if failed > 0 || deleted+missing < len(names) {
		fmt.Printf("; %d NOT deleted (first error: %s)", len(names)-deleted-missing, firstErr)
	}
	fmt.Println()
}

// runID makes benchmark key names unique per run.
func runID() string { return strconv.FormatInt(time.Now().UnixNano()/1e6%1e9, 36) }

// cmdCreate: key-create throughput and latency, clients spread over
// every node (so most creates are forwarded to the leader) vs the leader
// only, at each client count, in interleaved slices.
func cmdCreate(args []string) error {
	fs := flag.NewFlagSet("create", flag.ContinueOnError)
	opts := clusterFlags(fs)
	clientsFlag := fs.String("clients", "1,64", "client counts, comma-separated")
	duration := fs.Duration("duration", 5*time.Second, "measured time per client count and target")
	slices := fs.Int("slices", 4, "cut each duration into this many slices, spread and leader-only alternating")
	warmup := fs.Duration("warmup", time.Second, "warm-up before the first slice, excluded")
	sliceWarmup := fs.Duration("slice-warmup", 200*time.Millisecond, "warm-up before every later slice, excluded")
	proto := fs.Int("http", 2, "HTTP version: 1 or 2")
	prefix := fs.String("prefix", "kmsd-bench-create-"+runID(), "name prefix of the keys created")
	cleanup := fs.Bool("cleanup", true, "delete the created keys afterwards")
	paced := fs.Float64("paced", 500, "also run the largest client count over all nodes paced to this many creates/s in total (latency from the scheduled start); 0 = off")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o, err := opts()
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	var counts []int
	for _, s := range splitList(*clientsFlag) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return fmt.Errorf("create: bad client count %q", s)
		}
		counts = append(counts, n)
	}
	if *slices < 1 {
		return errors.New("create: --slices must be >= 1")
	}
	ctx, stop := signalContext()
	defer stop()
	ctl := o.client()
	defer ctl.CloseIdleConnections()
	if err := waitReady(ctx, ctl, o.servers, 30*time.Second); err != nil {
		return fmt.Errorf("create: %w", err)
	}
	leader, err := findLeader(ctx, ctl, o.servers, 30*time.Second)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	pids := o.pids()
	fmt.Printf("key create: %d nodes, leader %s; per client count %s per target in %d slices (spread and leader-only alternating, ABBA),\n"+
		"warm-up %s first and %s before each later slice, excluded. Every request creates a new key.\n",
		len(o.servers), o.servers[leader], *duration, *slices, *warmup, *sliceWarmup)
	fmt.Printf("NOTE: %d CPU core(s) on this machine, shared by the load generator and all %d nodes.\n", runtime.NumCPU(), len(o.servers))

	type row struct {
		clients      int
		spread, lead *loadResult
	}
	var rows []row
	var created []string
	defer func() {
		if *cleanup {
			if l, err := findLeader(context.Background(), ctl, o.servers, 10*time.Second); err == nil {
				leader = l
			}
			deleteKeys(context.Background(), o, o.servers[leader], created, 2*time.Minute)
		} else if len(created) > 0 {
			fmt.Printf("left %d keys named %s-* behind (--cleanup=false)\n", len(created), *prefix)
		}
	}()
	for _, n := range counts {
		base := loadConfig{
			RootCAs: o.pool, ClientCert: o.cert, Op: "create", HTTP: *proto, Clients: n,
			MaxOps: 50_000_000, PIDs: pids,
		}
		spread, lead := base, base
		// Spread round-robin starting after the leader, so that a single
		// client is forwarded too.
		spread.Servers, spread.Key = rotate(o.servers, leader+1), fmt.Sprintf("%s-s%d", *prefix, n)
		lead.Servers, lead.Key = []string{o.servers[leader]}, fmt.Sprintf("%s-l%d", *prefix, n)
		res, err := runCell(ctx, [2]loadConfig{spread, lead}, [2]string{"spread", "leader-only"}, "create", *proto,
			*slices, *duration/time.Duration(*slices), *warmup, *sliceWarmup, 0)
		for _, r := range res {
			if r != nil {
				created = append(created, r.Created...)
			}
		}
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		printResult(os.Stdout, res[0], fmt.Sprintf("all %d nodes: ", len(o.servers)))
		printResult(os.Stdout, res[1], "leader only: ")
		rows = append(rows, row{n, res[0], res[1]})
	}
	var pacedRes *loadResult
	if *paced > 0 && len(rows) > 0 {
		n := rows[len(rows)-1].clients
		cfg := loadConfig{
			Servers: rotate(o.servers, leader+1), RootCAs: o.pool, ClientCert: o.cert, Op: "create", HTTP: *proto,
			Clients: n, MaxOps: 50_000_000, PIDs: pids, Rate: *paced, Key: fmt.Sprintf("%s-p%d", *prefix, n),
		}
		l, err := newLoader(ctx, cfg)
		if err != nil {
			return fmt.Errorf("create: paced: %w", err)
		}
		pacedRes, err = l.run(ctx, *warmup, *duration)
		l.close()
		if pacedRes != nil {
			created = append(created, pacedRes.Created...)
		}
		if err != nil {
			return fmt.Errorf("create: paced: %w", err)
		}
		printResult(os.Stdout, pacedRes, fmt.Sprintf("all %d nodes, paced to %.0f/s: ", len(o.servers), *paced))
	}
	if l, err := findLeader(ctx, ctl, o.servers, 5*time.Second); err == nil && l != leader {
		fmt.Printf("WARNING: the leader moved during the run (%s -> %s): leader-only numbers include forwarding\n", o.servers[leader], o.servers[l])
	}

	fmt.Println()
	fmt.Printf("%-8s %-22s %10s %9s %9s %9s %8s %14s\n", "clients", "endpoints", "creates/s", "p50", "p99", "max", "errors", "cluster CPU/op")
	var errs uint64
	for _, r := range rows {
		for _, x := range []struct {
			what string
			res  *loadResult
		}{
			{fmt.Sprintf("all %d (%d/%d forwarded)", len(o.servers), forwardedClients(r.clients, len(o.servers), len(o.servers)-1), r.clients), r.spread},
			{"leader only", r.lead},
		} {
			fmt.Printf("%-8d %-22s %10.0f %9s %9s %9s %8d %14s\n", r.clients, x.what, x.res.opsPerSec(),
				fmtDur(x.res.p(0.5)), fmtDur(x.res.p(0.99)), fmtDur(time.Duration(x.res.Hist.max)), x.res.Errors, cpuPerOp(x.res))
			errs += x.res.Errors
		}
		if r.lead.opsPerSec() > 0 {
			fmt.Printf("%-8d spread/leader-only throughput ratio %.2f (slice ratios %s)\n", r.clients,
				r.spread.opsPerSec()/r.lead.opsPerSec(), sliceRatios(r.spread, r.lead))
		}
	}
	if pacedRes != nil {
		n := rows[len(rows)-1].clients
		fmt.Printf("%-8d %-22s %10.0f %9s %9s %9s %8d %14s\n", n, fmt.Sprintf("all %d, paced %.0f/s", len(o.servers), *paced),
			pacedRes.opsPerSec(), fmtDur(pacedRes.p(0.5)), fmtDur(pacedRes.p(0.99)), fmtDur(time.Duration(pacedRes.Hist.max)),
			pacedRes.Errors, cpuPerOp(pacedRes))
		errs += pacedRes.Errors
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	for _, r := range rows {
		if r.clients != 64 {
			continue
		}
		fmt.Printf("issue goal, 64 clients over all nodes, >= 500 creates/s: %s (%.0f creates/s at saturation)\n",
			verdict(r.spread.opsPerSec() >= 500), r.spread.opsPerSec())
		fmt.Printf("issue goal, 64 clients over all nodes, p99 <= 50ms: at saturation %s (p99 %s)",
			verdict(r.spread.p(0.99) <= 50*time.Millisecond), fmtDur(r.spread.p(0.99)))
		if pacedRes != nil && pacedRes.Clients == 64 {
			fmt.Printf("; paced to %.0f/s %s (p99 %s, %.0f creates/s done)", *paced,
				verdict(pacedRes.p(0.99) <= 50*time.Millisecond && pacedRes.opsPerSec() >= 0.95**paced),
				fmtDur(pacedRes.p(0.99)), pacedRes.opsPerSec())
		}
		fmt.Println()
	}
	fmt.Println("saturation = closed loop, every client sends its next create when the last one answered; " +
		"paced = the same clients sending on a fixed schedule, latency measured from the scheduled start.")
	fmt.Println("forwarded = clients connected to a follower; their creates travel follower -> leader -> quorum -> follower.")
	fmt.Println("cluster CPU/op = user+system CPU of all nodes per successful create (replication included).")
	if errs > 0 {
		return fmt.Errorf("create: %d requests failed: the numbers above are not valid", errs)
	}
	return nil
}

// rotate returns s starting at index i (mod len(s)).
func rotate(s []string, i int) []string {
	i %= len(s)
	return append(append([]string(nil), s[i:]...), s[:i]...)
}

// forwardedClients counts the clients of n, spread round-robin over
// nodes servers of which the one at index leader is the leader, that talk
// to a follower.
func forwardedClients(n, nodes, leader int) int {
	f := 0
	for i := range n {
		if i%nodes != leader {
			f++
		}
	}
	return f
}

// cmdNodes: generate and decrypt against one node vs against all nodes
// (clients spread), in interleaved slices.
func cmdNodes(args []string) error {
	fs := flag.NewFlagSet("nodes", flag.ContinueOnError)
	opts := clusterFlags(fs)
	clients := fs.Int("clients", 64, "concurrent clients")
	duration := fs.Duration("duration", 5*time.Second, "measured time per op and target")
	slices := fs.Int("slices", 4, "cut each duration into this many slices, one node and all nodes alternating")
	warmup := fs.Duration("warmup", time.Second, "warm-up before the first slice, excluded")
	sliceWarmup := fs.Duration("slice-warmup", 100*time.Millisecond, "warm-up before every later slice, excluded")
	proto := fs.Int("http", 2, "HTTP version: 1 or 2")
	opsFlag := fs.String("ops", "generate,decrypt", "operations")
	key := fs.String("key", "kmsd-bench", "key name (created if missing)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o, err := opts()
	if err != nil {
		return fmt.Errorf("nodes: %w", err)
	}
	if *slices < 1 {
		return errors.New("nodes: --slices must be >= 1")
	}
	ctx, stop := signalContext()
	defer stop()
	ctl := o.client()
	defer ctl.CloseIdleConnections()
	if err := waitReady(ctx, ctl, o.servers, 30*time.Second); err != nil {
		return fmt.Errorf("nodes: %w", err)
	}
	if err := ensureKey(ctx, ctl, o.servers[0], *key); err != nil {
		return fmt.Errorf("nodes: %w", err)
	}
	pids := o.pids()
	one := loadConfig{Servers: o.servers[:1], RootCAs: o.pool, ClientCert: o.cert, Key: *key, HTTP: *proto,
		Clients: *clients, MaxOps: 50_000_000}
	all := one
	all.Servers = o.servers
	if len(pids) == len(o.servers) {
		one.PIDs, all.PIDs = pids[:1], pids
	}
	nAll := fmt.Sprintf("all %d nodes", len(o.servers))
	fmt.Printf("generate/decrypt: %d clients against %s vs spread over %s; %s per op and target in %d slices (alternating, ABBA).\n",
		*clients, o.servers[0], nAll, *duration, *slices)
	fmt.Printf("NOTE: %d CPU core(s) on this machine, shared by the load generator and all nodes: more nodes do not add cores here.\n", runtime.NumCPU())
	type row struct {
		op       string
		one, all *loadResult
	}
	var rows []row
	for i, op := range splitList(*opsFlag) {
		res, err := runCell(ctx, [2]loadConfig{one, all}, [2]string{"one node", nAll}, op, *proto,
			*slices, *duration/time.Duration(*slices), *warmup, *sliceWarmup, i%2)
		if err != nil {
			return fmt.Errorf("nodes: %w", err)
		}
		printResult(os.Stdout, res[0], "one node:  ")
		printResult(os.Stdout, res[1], nAll+": ")
		rows = append(rows, row{op, res[0], res[1]})
	}
	fmt.Println()
	fmt.Printf("%-9s %-12s %9s %9s %9s %12s %9s %9s %9s %9s %13s\n", "op", "proto", "1 node/s", "p50", "p99",
		fmt.Sprintf("%d nodes/s", len(o.servers)), "p50", "p99", "ratio", "errors", "CPU/op 1 / n")
	var errs uint64
	for _, r := range rows {
		ratio := 0.0
		if r.one.opsPerSec() > 0 {
			ratio = r.all.opsPerSec() / r.one.opsPerSec()
		}
		fmt.Printf("%-9s %-12s %9.0f %9s %9s %12.0f %9s %9s %9.2f %9s %13s\n", r.op, protoName(*proto),
			r.one.opsPerSec(), fmtDur(r.one.p(0.5)), fmtDur(r.one.p(0.99)),
			r.all.opsPerSec(), fmtDur(r.all.p(0.5)), fmtDur(r.all.p(0.99)), ratio,
			fmt.Sprintf("%d/%d", r.one.Errors, r.all.Errors), cpuPerOp(r.one)+" / "+cpuPerOp(r.all))
		errs += r.one.Errors + r.all.Errors
	}
	fmt.Printf("ratio = all nodes / one node (ops/s); same clients, same run, alternating slices.\n")
	if errs > 0 {
		return fmt.Errorf("nodes: %d requests failed: the numbers above are not valid", errs)
	}
	return nil
}
