package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const usage = `usage: kmsd-bench <command> [flags]

commands:
  baseline  serve the bare mTLS + KES crypto ceiling
  load      run one load against a server
  compare   run the generate/decrypt x HTTP/2/HTTP/1.1 matrix against kmsd and the baseline
  create    key-create throughput and p50/p99 on a cluster: clients spread over all nodes vs leader only
  nodes     generate/decrypt ops/s against one node vs spread over all nodes
  failover  SIGKILL the leader under a stream of creates; time to the first successful write

Run "kmsd-bench <command> -h" for the flags of a command.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "baseline":
		err = cmdBaseline(args)
	case "load":
		err = cmdLoad(args)
	case "compare":
		err = cmdCompare(args)
	case "create":
		err = cmdCreate(args)
	case "nodes":
		err = cmdNodes(args)
	case "failover":
		err = cmdFailover(args)
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "kmsd-bench: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kmsd-bench: %v\n", err)
		os.Exit(1)
	}
}

// envOr returns the environment variable or def.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// firstURL takes the first of a comma/space separated endpoint list
// (KES_SERVER may hold several) and strips a trailing slash.
func firstURL(s string) string {
	f := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
	if len(f) == 0 {
		return ""
	}
	return strings.TrimRight(f[0], "/")
}

// loadCAPool reads PEM certificates to trust; "" means the system roots.
func loadCAPool(path string) (*x509.CertPool, error) {
	if path == "" {
		return x509.SystemCertPool()
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return pool, nil
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func cmdLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	server := fs.String("server", firstURL(os.Getenv("KES_SERVER")), "server URL (default $KES_SERVER)")
	apiKey := fs.String("api-key", os.Getenv("KES_API_KEY"), "KES API key (default $KES_API_KEY)")
	ca := fs.String("ca", os.Getenv("KES_CA"), "CA certificate of the server (default $KES_CA)")
	serverName := fs.String("server-name", "", "TLS server name to verify (default: the URL host)")
	key := fs.String("key", "kmsd-bench", "key name (created if missing)")
	op := fs.String("op", "generate", "generate, decrypt or create (a new key KEY-CLIENT-N per request; they are left behind)")
	clients := fs.Int("clients", 64, "concurrent clients, one TLS connection each")
	duration := fs.Duration("duration", 10*time.Second, "measured duration")
	warmup := fs.Duration("warmup", time.Second, "warm-up, excluded from the results")
	proto := fs.Int("http", 2, "HTTP version: 1 (HTTP/1.1) or 2")
	pid := fs.Int("pid", 0, "server pid, for its RSS and CPU time")
	maxOps := fs.Int("max-ops", 50_000_000, "stop after this many requests over all clients")
	rate := fs.Float64("rate", 0, "pace all clients together to this many requests/s (latency from the scheduled start); 0 = closed loop")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *server == "" || *apiKey == "" {
		return errors.New("load: --server and --api-key (or KES_SERVER and KES_API_KEY) are required")
	}
	cert, err := clientCertificate(*apiKey)
	if err != nil {
		return err
	}
	pool, err := loadCAPool(*ca)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	cfg := loadConfig{
		Server: strings.TrimRight(*server, "/"), ServerName: *serverName, RootCAs: pool, ClientCert: cert,
		Key: *key, Op: *op, HTTP: *proto, Clients: *clients, Warmup: *warmup, Duration: *duration,
		MaxOps: *maxOps, PID: *pid, Rate: *rate,
	}
	if cfg.Op != "create" {
		c := newHTTPClient(&cfg)
		err = ensureKey(ctx, c, cfg.Server, cfg.Key)
		c.CloseIdleConnections()
		if err != nil {
			return err
		}
	}
	res, err := runLoad(ctx, cfg)
	if err != nil {
		return err
	}
	printResult(os.Stdout, res, "")
	if res.Errors > 0 {
		return fmt.Errorf("%d requests failed", res.Errors)
	}
	return nil
}
