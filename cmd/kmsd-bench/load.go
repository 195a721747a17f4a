package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// benchContext is the associated data sent with every request, shaped
// like the context MinIO sends.
var benchContext = []byte(`{"kmsd-bench/object":"bucket/object"}`)

// loadConfig describes one load run against one server or a cluster.
type loadConfig struct {
	Server string // base URL, https://host:port
	// Servers, if set, replaces Server: client i talks to
	// Servers[i%len(Servers)] (a cluster's endpoints).
	Servers    []string
	ServerName string // TLS server name to verify, if not the URL host
	RootCAs    *x509.CertPool
	ClientCert tls.Certificate
	// Key is the key name for generate and decrypt, and the name prefix
	// for create: every create makes a new key KEY-CLIENT-N.
	Key      string
	Op       string // "generate", "decrypt" or "create"
	HTTP     int    // 1 or 2
	Clients  int
	Warmup   time.Duration
	Duration time.Duration
	MaxOps   int   // upper bound on requests per run, over all clients
	PID      int   // server process to observe; 0 = none
	PIDs     []int // if set, replaces PID: CPU and memory are summed
	// Rate, if > 0, paces the clients to this many requests per second
	// in total (each client at Rate/Clients, staggered). A request's
	// latency is then measured from its scheduled start, so a server
	// that falls behind the schedule is charged for the wait
	// (no coordinated omission).
	Rate float64
}

// servers returns the endpoints clients are spread over.
func (c *loadConfig) servers() []string {
	if len(c.Servers) > 0 {
		return c.Servers
	}
	return []string{c.Server}
}

// pids returns the server processes to observe.
func (c *loadConfig) pids() []int {
	if len(c.PIDs) > 0 {
		return c.PIDs
	}
	if c.PID > 0 {
		return []int{c.PID}
	}
	return nil
}

// loadResult is what one run measured. Only requests that completed
// inside the measured window (after the warm-up) count.
type loadResult struct {
	Op, Proto    string
	Clients      int
	Window       time.Duration
	Ops          uint64 // successful requests in the window
	Errors       uint64 // failed requests in the window
	WarmupErrors uint64
	ErrorKinds   map[string]uint64
	Hist         *histogram

	HaveServer    bool
	ServerMem     memStat       // after the run
	ServerCPU     time.Duration // CPU used by the server in the window
	HaveServerCPU bool
	SelfCPU       time.Duration // CPU used by this process in the window
	// MachineCPU is the user+system CPU of the whole machine in the
	// window, to estimate what other processes took.
	MachineCPU     time.Duration
	HaveMachineCPU bool
	// SliceRates is ops/s of every slice this result sums.
	SliceRates []float64
	// Created lists the key names create requests asked for (also the
	// failed and the warm-up ones), so they can be deleted afterwards.
	Created []string
}

func (r *loadResult) opsPerSec() float64 {
	if r.Window <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Window.Seconds()
}

func (r *loadResult) p(q float64) time.Duration { return r.Hist.quantile(q) }

// otherCPU estimates the cores used by processes other than the server
// and the load generator during the window (noise on a shared machine).
func (r *loadResult) otherCPU() (float64, bool) {
	if !r.HaveMachineCPU || !r.HaveServerCPU || r.Window <= 0 {
		return 0, false
	}
	o := (r.MachineCPU - r.ServerCPU - r.SelfCPU).Seconds() / r.Window.Seconds()
	return max(o, 0), true
}

// serverCPUPerOp is the server's CPU time per successful request.
func (r *loadResult) serverCPUPerOp() time.Duration {
	if !r.HaveServerCPU || r.Ops == 0 {
		return 0
	}
	return r.ServerCPU / time.Duration(r.Ops)
}

func protoName(v int) string {
	if v == 1 {
		return "HTTP/1.1"
	}
	return "HTTP/2"
}

// newHTTPClient returns a client with its own transport, hence its own
// TLS connection, speaking only the requested protocol.
func newHTTPClient(cfg *loadConfig) *http.Client {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			RootCAs:      cfg.RootCAs,
			ServerName:   cfg.ServerName,
			Certificates: []tls.Certificate{cfg.ClientCert},
		},
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	if cfg.HTTP == 2 {
		tr.ForceAttemptHTTP2 = true
	} else {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// apiError is a non-200 answer.
type apiError struct {
	Status  int
	Message string
}

func (e *apiError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Status, e.Message) }

// call sends one request and decodes a 200 JSON answer into out (if not
// nil). Used outside the measured loop.
func call(ctx context.Context, c *http.Client, method, url string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return &apiError{Status: resp.StatusCode, Message: errorMessage(b)}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s: bad response: %w", url, err)
		}
	}
	return nil
}

// errorMessage extracts the KES error message from a body.
func errorMessage(b []byte) string {
	var m struct {
		Message string `json:"message"`
		Error   string `json:"error"`
	}
	if json.Unmarshal(b, &m) == nil {
		if m.Message != "" {
			return m.Message
		}
		if m.Error != "" {
			return m.Error
		}
	}
	s := strings.TrimSpace(string(b))
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}

// ensureKey creates the key; "key already exists" counts as success.
func ensureKey(ctx context.Context, c *http.Client, server, name string) error {
	err := call(ctx, c, http.MethodPost, server+"/v1/key/create/"+url.PathEscape(name), nil, nil)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status == http.StatusBadRequest && ae.Message == "key already exists" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create key %q on %s: %w", name, server, err)
	}
	return nil
}

// requestBody returns the URL path and the fixed body every request of
// the run sends. For decrypt it generates one DEK first (on the first
// server), so that every decrypt hits the same (cached) key with a valid
// ciphertext, and checks the round trip once on every server.
func requestBody(ctx context.Context, c *http.Client, cfg *loadConfig) (string, []byte, error) {
	name := url.PathEscape(cfg.Key)
	genPath := "/v1/key/generate/" + name
	genURL := cfg.servers()[0] + genPath
	genBody, _ := json.Marshal(generateRequest{Context: benchContext})
	var dek generateResponse
	if err := call(ctx, c, http.MethodPost, genURL, genBody, &dek); err != nil {
		return "", nil, fmt.Errorf("generate: %w", err)
	}
	if len(dek.Plaintext) != 32 || len(dek.Ciphertext) == 0 {
		return "", nil, fmt.Errorf("generate: unexpected DEK (%d-byte plaintext, %d-byte ciphertext)", len(dek.Plaintext), len(dek.Ciphertext))
	}
	switch cfg.Op {
	case "generate":
		return genPath, genBody, nil
	case "decrypt":
		decPath := "/v1/key/decrypt/" + name
		decBody, _ := json.Marshal(decryptRequest{Ciphertext: dek.Ciphertext, Context: benchContext})
		for _, srv := range cfg.servers() {
			var out decryptResponse
			if err := call(ctx, c, http.MethodPost, srv+decPath, decBody, &out); err != nil {
				return "", nil, fmt.Errorf("decrypt on %s: %w", srv, err)
			}
			if !bytes.Equal(out.Plaintext, dek.Plaintext) {
				return "", nil, fmt.Errorf("decrypt on %s: plaintext does not match the generated DEK", srv)
			}
		}
		return decPath, decBody, nil
	default:
		return "", nil, fmt.Errorf("unknown op %q (want generate or decrypt)", cfg.Op)
	}
}

// clientStats is one client's share of the result; merged at the end.
type clientStats struct {
	hist       histogram
	ops, errs  uint64
	warmupErrs uint64
	kinds      map[string]uint64
}

const maxErrorKinds = 8

func (s *clientStats) noteError(kind string) {
	if s.kinds == nil {
		s.kinds = make(map[string]uint64)
	}
	if _, ok := s.kinds[kind]; ok || len(s.kinds) < maxErrorKinds {
		s.kinds[kind]++
	}
}

// runLoad runs cfg.Clients clients in a closed loop for warm-up plus
// duration and returns what the window measured.
func runLoad(ctx context.Context, cfg loadConfig) (*loadResult, error) {
	l, err := newLoader(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer l.close()
	return l.run(ctx, cfg.Warmup, cfg.Duration)
}

// loader holds one configuration's clients and their connections, so a
// run can be cut into slices interleaved with another server's.
type loader struct {
	cfg     loadConfig
	clients []*http.Client
	bases   []string // server base URL of client i
	checked []bool   // protocol verified on client i
	path    string   // generate/decrypt: the request path
	body    []byte
	issued  []int // create: names issued by client i so far
}

// createPath is the path of client i's n-th create.
func (l *loader) createPath(i, n int) string {
	return "/v1/key/create/" + url.PathEscape(l.cfg.Key+"-"+strconv.Itoa(i)+"-"+strconv.Itoa(n))
}

// createdName is the key name of client i's n-th create.
func (l *loader) createdName(i, n int) string {
	return l.cfg.Key + "-" + strconv.Itoa(i) + "-" + strconv.Itoa(n)
}

// newLoader creates the clients and prepares the request (see
// requestBody). Connections are opened by the first run's warm-up.
func newLoader(ctx context.Context, cfg loadConfig) (*loader, error) {
	if cfg.Clients < 1 {
		return nil, errors.New("clients must be >= 1")
	}
	if cfg.HTTP != 1 && cfg.HTTP != 2 {
		return nil, fmt.Errorf("http must be 1 or 2, not %d", cfg.HTTP)
	}
	if cfg.MaxOps <= 0 {
		cfg.MaxOps = 50_000_000
	}
	l := &loader{
		cfg: cfg, clients: make([]*http.Client, cfg.Clients), bases: make([]string, cfg.Clients),
		checked: make([]bool, cfg.Clients), issued: make([]int, cfg.Clients),
	}
	srvs := cfg.servers()
	for i := range l.clients {
		l.clients[i] = newHTTPClient(&l.cfg)
		l.bases[i] = strings.TrimRight(srvs[i%len(srvs)], "/")
	}
	if cfg.Op == "create" {
		if cfg.Key == "" {
			l.close()
			return nil, errors.New("create: a key name prefix is required")
		}
		return l, nil
	}
	prepCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var err error
	if l.path, l.body, err = requestBody(prepCtx, l.clients[0], &l.cfg); err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

func (l *loader) close() {
	for _, c := range l.clients {
		c.CloseIdleConnections()
	}
}

// run drives all clients for warmup+duration and measures the last
// duration. A request counts if it completes inside the window, so the
// throughput has no edge bias; its latency is recorded only on success.
func (l *loader) run(ctx context.Context, warmup, duration time.Duration) (*loadResult, error) {
	cfg := &l.cfg
	if duration <= 0 {
		return nil, errors.New("duration must be > 0")
	}
	perClient := (cfg.MaxOps + cfg.Clients - 1) / cfg.Clients

	start := time.Now()
	warmEnd := start.Add(warmup)
	end := warmEnd.Add(duration)
	// In-flight requests may finish up to 10 s after the end; then the
	// context cuts them off, so no loop outlives the run by much.
	reqCtx, cancel := context.WithDeadline(ctx, end.Add(10*time.Second))
	defer cancel()

	// Sample CPU at the window's edges, in parallel with the load.
	type cpuSample struct {
		server, self, machine       time.Duration
		serverOK, selfOK, machineOK bool
	}
	pids := cfg.pids()
	sample := func() (s cpuSample) {
		if len(pids) > 0 {
			s.serverOK = true
			for _, pid := range pids {
				d, err := readCPU(pid)
				s.server += d
				s.serverOK = s.serverOK && err == nil
			}
		}
		if d, err := readCPU(os.Getpid()); err == nil {
			s.self, s.selfOK = d, true
		}
		if d, err := readMachineCPU(); err == nil {
			s.machine, s.machineOK = d, true
		}
		return s
	}
	var cpu0, cpu1 cpuSample
	var sampler sync.WaitGroup
	sampler.Go(func() {
		sleepUntil(reqCtx, warmEnd)
		cpu0 = sample()
		sleepUntil(reqCtx, end)
		cpu1 = sample()
	})

	var protoMismatch atomic.Value // string
	stats := make([]*clientStats, cfg.Clients)
	issued0 := append([]int(nil), l.issued...)
	create := cfg.Op == "create"
	var wg sync.WaitGroup
	for i, c := range l.clients {
		st := &clientStats{}
		stats[i] = st
		checked := &l.checked[i]
		target := l.bases[i] + l.path
		wg.Go(func() {
			var interval time.Duration
			var next time.Time
			if cfg.Rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(cfg.Clients) / cfg.Rate)
				next = start.Add(interval * time.Duration(i) / time.Duration(cfg.Clients))
			}
			for n := 0; n < perClient; n++ {
				t0 := time.Now()
				if interval > 0 {
					sleepUntil(reqCtx, next)
					t0, next = next, next.Add(interval)
				}
				if !t0.Before(end) {
					return
				}
				if create {
					target = l.bases[i] + l.createPath(i, l.issued[i])
					l.issued[i]++
				}
				status, kind := doRequest(reqCtx, c, target, l.body, cfg.HTTP, checked, &protoMismatch)
				t1 := time.Now()
				if status == 0 && reqCtx.Err() != nil {
					return // interrupted or past the grace period
				}
				if t1.Before(warmEnd) {
					if status != http.StatusOK {
						st.warmupErrs++
						st.noteError(kind)
					}
					continue
				}
				if t1.After(end) {
					continue
				}
				if status == http.StatusOK {
					st.ops++
					st.hist.record(t1.Sub(t0))
				} else {
					st.errs++
					st.noteError(kind)
				}
				if protoMismatch.Load() != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	cancel()
	sampler.Wait()
	if m := protoMismatch.Load(); m != nil {
		return nil, errors.New(m.(string))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	res := &loadResult{
		Op:         cfg.Op,
		Proto:      protoName(cfg.HTTP),
		Clients:    cfg.Clients,
		Window:     duration,
		Hist:       &histogram{},
		ErrorKinds: make(map[string]uint64),
	}
	for _, st := range stats {
		res.Ops += st.ops
		res.Errors += st.errs
		res.WarmupErrors += st.warmupErrs
		res.Hist.merge(&st.hist)
		for k, v := range st.kinds {
			res.ErrorKinds[k] += v
		}
	}
	if cpu0.serverOK && cpu1.serverOK {
		res.ServerCPU, res.HaveServerCPU = cpu1.server-cpu0.server, true
	}
	if cpu0.selfOK && cpu1.selfOK {
		res.SelfCPU = cpu1.self - cpu0.self
	}
	if cpu0.machineOK && cpu1.machineOK {
		res.MachineCPU, res.HaveMachineCPU = cpu1.machine-cpu0.machine, true
	}
	res.SliceRates = []float64{res.opsPerSec()}
	if len(pids) > 0 {
		res.HaveServer = true
		for _, pid := range pids {
			m, err := readMem(pid)
			res.ServerMem.HWM += m.HWM
			res.ServerMem.RSS += m.RSS
			res.HaveServer = res.HaveServer && err == nil
		}
	}
	for i := range l.issued {
		for n := issued0[i]; n < l.issued[i]; n++ {
			res.Created = append(res.Created, l.createdName(i, n))
		}
	}
	return res, nil
}

// add accumulates another slice of the same configuration into r.
func (r *loadResult) add(o *loadResult) {
	r.Window += o.Window
	r.Ops += o.Ops
	r.Errors += o.Errors
	r.WarmupErrors += o.WarmupErrors
	r.Hist.merge(o.Hist)
	for k, v := range o.ErrorKinds {
		r.ErrorKinds[k] += v
	}
	r.HaveServerCPU = r.HaveServerCPU && o.HaveServerCPU
	r.ServerCPU += o.ServerCPU
	r.SelfCPU += o.SelfCPU
	r.HaveMachineCPU = r.HaveMachineCPU && o.HaveMachineCPU
	r.MachineCPU += o.MachineCPU
	r.SliceRates = append(r.SliceRates, o.SliceRates...)
	r.Created = append(r.Created, o.Created...)
	if o.HaveServer {
		r.HaveServer = true
		r.ServerMem.RSS = o.ServerMem.RSS
		r.ServerMem.HWM = max(r.ServerMem.HWM, o.ServerMem.HWM)
	}
}

// doRequest sends one measured request. It returns the status (0 on a
// transport error) and, for failures, a short description. The first
// answer on each client is checked for the negotiated protocol.
func doRequest(ctx context.Context, c *http.Client, target string, body []byte, proto int, checked *bool, mismatch *atomic.Value) (int, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
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
	if !*checked {
		*checked = true
		if resp.ProtoMajor != proto {
			mismatch.CompareAndSwap(nil, fmt.Sprintf("asked for %s, server answered with %s", protoName(proto), resp.Proto))
		}
	}
	if resp.StatusCode == http.StatusOK {
		_, err := io.Copy(io.Discard, resp.Body)
		if err != nil {
			return 0, "reading body: " + err.Error()
		}
		return http.StatusOK, ""
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, (&apiError{Status: resp.StatusCode, Message: errorMessage(b)}).Error()
}

func sleepUntil(ctx context.Context, t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
	case <-ctx.Done():
	}
}

// printResult writes a human-readable report of one run.
func printResult(w io.Writer, r *loadResult, label string) {
	fmt.Fprintf(w, "%s%s %s clients=%d window=%s ops=%d ops/s=%.0f p50=%s p99=%s max=%s errors=%d\n",
		label, r.Op, r.Proto, r.Clients, r.Window, r.Ops, r.opsPerSec(),
		fmtDur(r.p(0.50)), fmtDur(r.p(0.99)), fmtDur(time.Duration(r.Hist.max)), r.Errors)
	if r.WarmupErrors > 0 {
		fmt.Fprintf(w, "  warm-up errors (excluded): %d\n", r.WarmupErrors)
	}
	kinds := make([]string, 0, len(r.ErrorKinds))
	for k := range r.ErrorKinds {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(w, "  error x%d: %s\n", r.ErrorKinds[k], k)
	}
	if r.HaveServer {
		fmt.Fprintf(w, "  server: peak RSS (VmHWM, since start) %s, current RSS (VmRSS) %s\n",
			fmtKiB(r.ServerMem.HWM), fmtKiB(r.ServerMem.RSS))
	}
	if r.HaveServerCPU {
		fmt.Fprintf(w, "  server CPU: %.2f cores, %s/op\n",
			r.ServerCPU.Seconds()/r.Window.Seconds(), fmtDur(r.serverCPUPerOp()))
	}
	if r.SelfCPU > 0 {
		fmt.Fprintf(w, "  load generator CPU: %.2f cores\n", r.SelfCPU.Seconds()/r.Window.Seconds())
	}
	if o, ok := r.otherCPU(); ok {
		fmt.Fprintf(w, "  other processes (approx.): %.2f cores\n", o)
	}
}

// fmtDur prints a latency with three significant digits.
func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.3gs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.3gms", float64(d)/float64(time.Millisecond))
	case d >= time.Microsecond:
		return fmt.Sprintf("%.3gµs", float64(d)/float64(time.Microsecond))
	default:
		return fmt.Sprintf("%dns", int64(d))
	}
}

func fmtKiB(kib uint64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }
