package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// The goal from the issue: kmsd reaches this share of the baseline.
const goalRatio = 0.9

// Background load (cores) above which a run is flagged as unreliable.
const noisyLoad = 0.2

func cmdCompare(args []string) error {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	server := fs.String("server", firstURL(os.Getenv("KES_SERVER")), "kmsd URL (default: first of $KES_SERVER)")
	apiKey := fs.String("api-key", os.Getenv("KES_API_KEY"), "KES API key (default $KES_API_KEY)")
	ca := fs.String("ca", os.Getenv("KES_CA"), "CA certificate of kmsd (default $KES_CA)")
	pidFile := fs.String("pid-file", envOr("KMSD_PID_FILE", ".kmsd-dev/node1.pid"), "kmsd pid file (default $KMSD_PID_FILE)")
	pidFlag := fs.Int("pid", 0, "kmsd pid (overrides --pid-file)")
	key := fs.String("key", "kmsd-bench", "key name (created on both servers if missing)")
	clients := fs.Int("clients", 64, "concurrent clients, one TLS connection each")
	durDefault, err := time.ParseDuration(envOr("BENCH_DURATION", "10s"))
	if err != nil {
		return fmt.Errorf("BENCH_DURATION: %w", err)
	}
	duration := fs.Duration("duration", durDefault, "measured duration per run (default $BENCH_DURATION or 10s)")
	warmup := fs.Duration("warmup", time.Second, "warm-up per run, excluded")
	pause := fs.Duration("pause", 500*time.Millisecond, "idle time between runs")
	slices := fs.Int("slices", 10, "cut each cell's duration into this many slices, alternating kmsd and baseline")
	sliceWarmup := fs.Duration("slice-warmup", 100*time.Millisecond, "warm-up before every slice after the first, excluded")
	opsFlag := fs.String("ops", "generate,decrypt", "operations")
	protosFlag := fs.String("protos", "2,1", "HTTP versions")
	maxOps := fs.Int("max-ops", 50_000_000, "per-run cap on requests")
	bCert := fs.String("baseline-cert", "", "server certificate for the baseline (default: a throw-away self-signed ECDSA P-256 one)")
	bKey := fs.String("baseline-key", "", "private key for --baseline-cert")
	bCA := fs.String("baseline-ca", "", "CA that signed --baseline-cert (default: --ca)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *server == "" || *apiKey == "" {
		return errors.New("compare: --server and --api-key (or KES_SERVER and KES_API_KEY) are required")
	}
	if *slices < 1 {
		return errors.New("compare: --slices must be >= 1")
	}
	ops := strings.Split(*opsFlag, ",")
	var protos []int
	for _, p := range strings.Split(*protosFlag, ",") {
		switch strings.TrimSpace(p) {
		case "1", "1.1":
			protos = append(protos, 1)
		case "2":
			protos = append(protos, 2)
		default:
			return fmt.Errorf("compare: unknown HTTP version %q", p)
		}
	}

	clientCert, err := clientCertificate(*apiKey)
	if err != nil {
		return err
	}
	kmsdPool, err := loadCAPool(*ca)
	if err != nil {
		return err
	}
	kmsdURL := strings.TrimRight(*server, "/")
	u, err := url.Parse(kmsdURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("compare: bad server URL %q", kmsdURL)
	}

	kmsdPID := *pidFlag
	if kmsdPID == 0 && *pidFile != "" {
		if kmsdPID, err = readPIDFile(*pidFile); err != nil {
			fmt.Fprintf(os.Stderr, "kmsd-bench: no kmsd pid (%v): its RSS and CPU will not be reported\n", err)
			kmsdPID = 0
		}
	}

	ctx, stop := signalContext()
	defer stop()

	// The baseline: same binary, separate process, like kmsd.
	tmp, err := os.MkdirTemp("", "kmsd-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	baseCertFile, baseKeyFile := *bCert, *bKey
	var basePool *x509.CertPool
	var baseServerName string
	if baseCertFile == "" {
		if baseCertFile, baseKeyFile, err = writeThrowawayCert(tmp); err != nil {
			return err
		}
		if basePool, err = loadCAPool(baseCertFile); err != nil {
			return err
		}
	} else {
		if baseKeyFile == "" {
			return errors.New("compare: --baseline-key is required with --baseline-cert")
		}
		caFile := *bCA
		if caFile == "" {
			caFile = *ca
		}
		if basePool, err = loadCAPool(caFile); err != nil {
			return err
		}
		// The kmsd certificate may name only kmsd's host; verify the
		// baseline under that name.
		baseServerName = u.Hostname()
	}
	child, err := startBaselineChild(ctx, baseCertFile, baseKeyFile)
	if err != nil {
		return err
	}
	defer child.stop()
	baseURL := "https://" + child.addr

	kmsdCfg := loadConfig{Server: kmsdURL, RootCAs: kmsdPool, PID: kmsdPID}
	baseCfg := loadConfig{Server: baseURL, ServerName: baseServerName, RootCAs: basePool, PID: child.pid}
	for _, c := range []*loadConfig{&kmsdCfg, &baseCfg} {
		c.ClientCert, c.Key, c.Clients = clientCert, *key, *clients
		c.Warmup, c.Duration, c.MaxOps = *warmup, *duration, *maxOps
		hc := newHTTPClient(c)
		err := ensureKey(ctx, hc, c.Server, c.Key)
		if err == nil && c == &kmsdCfg {
			var d struct {
				Algorithm string `json:"algorithm"`
			}
			if call(ctx, hc, "GET", c.Server+"/v1/key/describe/"+url.PathEscape(c.Key), nil, &d) == nil {
				fmt.Printf("kmsd key %q: algorithm %s (baseline: AES256)\n", c.Key, d.Algorithm)
			}
		}
		hc.CloseIdleConnections()
		if err != nil {
			return err
		}
	}

	fmt.Printf("kmsd %s (pid %s) vs baseline %s (pid %d)\n", kmsdURL, pidString(kmsdPID), baseURL, child.pid)
	fmt.Printf("%d clients per server; per cell and server %s measured in %d slices, kmsd and baseline alternating (ABBA);\n"+
		"warm-up %s before the first slice and %s before each later one, excluded.\n",
		*clients, *duration, *slices, *warmup, *sliceWarmup)
	fmt.Printf("NOTE: %d CPU core(s) on this machine, shared by the load generator and the server under test;\n"+
		"      absolute numbers are pessimistic, compare the ratio (same load, same run, alternating order).\n",
		runtime.NumCPU())

	type cell struct {
		op         string
		proto      int
		kmsd, base *loadResult
	}
	var cells []*cell
	for _, op := range ops {
		for _, p := range protos {
			cells = append(cells, &cell{op: strings.TrimSpace(op), proto: p})
		}
	}
	sliceDur := *duration / time.Duration(*slices)
	var selfCPU, window time.Duration
	for i, c := range cells {
		if err := sleepCtx(ctx, *pause); err != nil {
			return err
		}
		res, err := runCell(ctx, [2]loadConfig{kmsdCfg, baseCfg}, [2]string{"kmsd", "baseline"}, c.op, c.proto, *slices, sliceDur, *warmup, *sliceWarmup, i%2)
		if err != nil {
			return err
		}
		c.kmsd, c.base = res[0], res[1]
		printResult(os.Stdout, c.kmsd, "kmsd:     ")
		printResult(os.Stdout, c.base, "baseline: ")
		for _, r := range res {
			selfCPU += r.SelfCPU
			window += r.Window
		}
	}

	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "op\tproto\tkmsd ops/s\tp50\tp99\tbaseline ops/s\tp50\tp99\tratio\tgoal\tslice ratio med (min-max)\tkmsd peak RSS\tbaseline peak RSS\tkmsd CPU/op\tbaseline CPU/op\tCPU ratio\tother load\terrors k/b\t")
	var totalErrs uint64
	var worstOther float64
	for _, c := range cells {
		other := "n/a"
		if o, ok := otherLoad(c.kmsd, c.base); ok {
			other = fmt.Sprintf("%.2f cores", o)
			worstOther = max(worstOther, o)
		}
		k, b := c.kmsd, c.base
		ratio := 0.0
		if b.opsPerSec() > 0 {
			ratio = k.opsPerSec() / b.opsPerSec()
		}
		goal := "ok"
		if ratio < goalRatio {
			goal = "BELOW"
		}
		totalErrs += k.Errors + b.Errors
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%s\t%s\t%.0f\t%s\t%s\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t\n",
			c.op, protoName(c.proto),
			k.opsPerSec(), fmtDur(k.p(0.5)), fmtDur(k.p(0.99)),
			b.opsPerSec(), fmtDur(b.p(0.5)), fmtDur(b.p(0.99)),
			ratio, goal, sliceRatios(k, b), peakRSS(k), peakRSS(b),
			cpuPerOp(k), cpuPerOp(b), cpuRatio(k, b), other, k.Errors, b.Errors)
	}
	tw.Flush()
	fmt.Printf("\nratio = kmsd ops/s / baseline ops/s; goal >= %.2f for generate and decrypt (decrypt is a key-cache hit).\n", goalRatio)
	fmt.Println("slice ratio = kmsd/baseline over each pair of adjacent slices: median (lowest-highest); a wide range means a noisy machine.")
	fmt.Println("peak RSS = VmHWM since the process started (it cannot be reset), read after each cell.")
	fmt.Println("CPU/op = server user+system CPU time per successful request (from /proc/PID/stat).")
	fmt.Println("CPU ratio = baseline CPU/op / kmsd CPU/op: the ratio if CPU were the only limit; steadier than ops/s on a busy machine.")
	fmt.Println("other load = cores used by processes other than the server and kmsd-bench while measuring (approx.).")
	if window > 0 {
		fmt.Printf("the load generator itself used %.2f of %d cores on average while measuring.\n",
			selfCPU.Seconds()/window.Seconds(), runtime.NumCPU())
	}
	if worstOther > noisyLoad {
		fmt.Printf("WARNING: other processes used up to %.2f cores while measuring: the ratios are unreliable, rerun on a quiet machine.\n", worstOther)
	}
	if m, err := readMem(child.pid); err == nil {
		fmt.Printf("baseline at the end: VmHWM %s, VmRSS %s\n", fmtKiB(m.HWM), fmtKiB(m.RSS))
	}
	if kmsdPID > 0 {
		if m, err := readMem(kmsdPID); err == nil {
			fmt.Printf("kmsd at the end:     VmHWM %s, VmRSS %s\n", fmtKiB(m.HWM), fmtKiB(m.RSS))
		}
	}
	if totalErrs > 0 {
		return fmt.Errorf("%d requests failed: the numbers above are not valid", totalErrs)
	}
	return nil
}

func pidString(pid int) string {
	if pid == 0 {
		return "unknown"
	}
	return fmt.Sprint(pid)
}

// sliceRatios gives the median and range of kmsd/baseline over paired
// (adjacent) slices. The median shrugs off a burst of background load
// during one slice; the range shows how noisy the machine was.
func sliceRatios(k, b *loadResult) string {
	var rs []float64
	for i := range min(len(k.SliceRates), len(b.SliceRates)) {
		if b.SliceRates[i] > 0 {
			rs = append(rs, k.SliceRates[i]/b.SliceRates[i])
		}
	}
	if len(rs) == 0 {
		return "n/a"
	}
	sort.Float64s(rs)
	med := rs[len(rs)/2]
	if len(rs)%2 == 0 {
		med = (rs[len(rs)/2-1] + rs[len(rs)/2]) / 2
	}
	return fmt.Sprintf("%.2f (%.2f-%.2f)", med, rs[0], rs[len(rs)-1])
}

// otherLoad averages the background load over both sides' windows.
func otherLoad(k, b *loadResult) (float64, bool) {
	o1, ok1 := k.otherCPU()
	o2, ok2 := b.otherCPU()
	if !ok1 || !ok2 {
		return 0, false
	}
	return (o1*k.Window.Seconds() + o2*b.Window.Seconds()) / (k.Window + b.Window).Seconds(), true
}

// peakRSS is VmHWM read after the cell's last slice.
func peakRSS(r *loadResult) string {
	if !r.HaveServer {
		return "n/a"
	}
	return fmtKiB(r.ServerMem.HWM)
}

// runCell measures one (op, protocol) cell on two servers: each side's
// duration is cut into slices run alternately, first side 'first' then
// the other, then the other again (ABBA...), so both see the same
// background load on a shared machine. The results are per server, with
// the slices summed.
func runCell(ctx context.Context, cfgs [2]loadConfig, names [2]string, op string, proto, slices int, sliceDur, warmup, sliceWarmup time.Duration, first int) ([2]*loadResult, error) {
	var res [2]*loadResult
	var loaders [2]*loader
	defer func() {
		for _, l := range loaders {
			if l != nil {
				l.close()
			}
		}
	}()
	for i := range cfgs {
		cfg := cfgs[i]
		cfg.Op, cfg.HTTP = op, proto
		l, err := newLoader(ctx, cfg)
		if err != nil {
			return res, fmt.Errorf("%s %s %s: %w", names[i], op, protoName(proto), err)
		}
		loaders[i] = l
	}
	for s := 0; s < 2*slices; s++ {
		side := first // A B B A A B B A ...
		if (s+1)/2%2 == 1 {
			side = 1 - first
		}
		w := sliceWarmup
		if res[side] == nil {
			w = warmup
		}
		r, err := loaders[side].run(ctx, w, sliceDur)
		if err != nil {
			return res, fmt.Errorf("%s %s %s: %w", names[side], op, protoName(proto), err)
		}
		if res[side] == nil {
			res[side] = r
		} else {
			res[side].add(r)
		}
	}
	return res, nil
}

func cpuRatio(k, b *loadResult) string {
	kc, bc := k.serverCPUPerOp(), b.serverCPUPerOp()
	if kc <= 0 || bc <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", float64(bc)/float64(kc))
}

func cpuPerOp(r *loadResult) string {
	if !r.HaveServerCPU || r.Ops == 0 {
		return "n/a"
	}
	return fmtDur(r.serverCPUPerOp())
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// baselineChild is a running `kmsd-bench baseline` process.
type baselineChild struct {
	cmd  *exec.Cmd
	pid  int
	addr string
	done chan struct{}
}

// startBaselineChild starts this binary's baseline subcommand on a free
// loopback port and waits (at most 10 s) for its "listening on" line.
func startBaselineChild(ctx context.Context, certFile, keyFile string) (*baselineChild, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "baseline", "--addr", "127.0.0.1:0", "--cert", certFile, "--key", keyFile)
	cmd.Stderr = os.Stderr
	setParentDeathSignal(cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start baseline: %w", err)
	}
	c := &baselineChild{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		r := bufio.NewReader(out)
		if line, err := r.ReadString('\n'); err == nil {
			lines <- line
		}
		close(lines)
		_, _ = io.Copy(os.Stderr, r)
		_ = cmd.Wait()
		close(c.done)
	}()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case line, ok := <-lines:
		addr, found := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
		if !ok || !found {
			c.stop()
			return nil, fmt.Errorf("baseline did not start (said %q)", line)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			c.stop()
			return nil, fmt.Errorf("baseline: bad address %q", addr)
		}
		c.addr = addr
		return c, nil
	case <-t.C:
	case <-ctx.Done():
	}
	c.stop()
	return nil, errors.New("baseline did not start within 10s")
}

// stop terminates the child: SIGTERM, then SIGKILL after 3 s.
func (c *baselineChild) stop() {
	_ = c.cmd.Process.Signal(os.Interrupt)
	t := time.NewTimer(3 * time.Second)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// writeThrowawayCert writes a self-signed ECDSA P-256 server certificate
// for 127.0.0.1 and localhost into dir.
func writeThrowawayCert(dir string) (certFile, keyFile string, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return "", "", err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "kmsd-bench baseline"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "baseline.crt"), filepath.Join(dir, "baseline.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}
