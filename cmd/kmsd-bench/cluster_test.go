package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestCreateLoadAndCleanup runs the create load over two "nodes" (the
// same in-process baseline twice) and deletes what it created.
func TestCreateLoadAndCleanup(t *testing.T) {
	certFile, keyFile, err := writeThrowawayCert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := loadCAPool(certFile)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, err := clientCertificate("kes:v1:AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, _, err := startBaseline(ctx, "127.0.0.1:0", serverCert)
	if err != nil {
		t.Fatal(err)
	}
	url := "https://" + addr.String()
	cfg := loadConfig{
		Servers: []string{url, url + "/"}, RootCAs: pool, ClientCert: clientCert,
		Key: "bench-create", Op: "create", HTTP: 2, Clients: 3,
		Warmup: 20 * time.Millisecond, Duration: 150 * time.Millisecond, MaxOps: 100_000,
	}
	l, err := newLoader(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	var total []string
	for range 2 { // two slices: names must not repeat
		res, err := l.run(ctx, cfg.Warmup, cfg.Duration)
		if err != nil {
			t.Fatal(err)
		}
		if res.Ops == 0 || res.Errors != 0 || res.WarmupErrors != 0 {
			t.Fatalf("ops=%d errors=%d warm-up errors=%d kinds=%v", res.Ops, res.Errors, res.WarmupErrors, res.ErrorKinds)
		}
		if uint64(len(res.Created)) < res.Ops {
			t.Fatalf("%d names recorded for %d creates", len(res.Created), res.Ops)
		}
		total = append(total, res.Created...)
	}
	seen := make(map[string]bool)
	for _, n := range total {
		if seen[n] {
			t.Fatalf("name %q created twice", n)
		}
		seen[n] = true
	}
	o := &clusterOpts{servers: []string{url}, cert: clientCert, pool: pool}
	deleteKeys(ctx, o, url, append(total, "never-created"), 10*time.Second)
	// Everything is gone: creating the names again succeeds.
	c := o.client()
	defer c.CloseIdleConnections()
	for _, n := range total[:3] {
		if st, kind := send(ctx, c, http.MethodPost, url+"/v1/key/create/"+n, nil); st != http.StatusOK {
			t.Fatalf("re-create %s: %d %s", n, st, kind)
		}
	}
}

func TestFindLeader(t *testing.T) {
	var urls []string
	var client *http.Client
	for _, state := range []int{0, 2, 0} {
		srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v1/metrics" {
				http.NotFound(w, r)
				return
			}
			fmt.Fprintf(w, "# HELP kmsd_raft_state x\n# TYPE kmsd_raft_state gauge\nkmsd_raft_state %d\nkmsd_raft_term 7\n", state)
		}))
		defer srv.Close()
		urls = append(urls, srv.URL)
		client = srv.Client() // all httptest servers share one certificate
	}
	ctx := context.Background()
	if v, err := metric(ctx, client, urls[0], "kmsd_raft_term"); err != nil || v != 7 {
		t.Fatalf("metric = %v, %v", v, err)
	}
	if _, err := metric(ctx, client, urls[0], "kmsd_nope"); err == nil {
		t.Fatal("a missing metric was found")
	}
	if i, err := findLeader(ctx, client, urls, time.Second); err != nil || i != 1 {
		t.Fatalf("findLeader = %d, %v", i, err)
	}
	if _, err := findLeader(ctx, client, []string{urls[0], urls[2]}, 200*time.Millisecond); err == nil {
		t.Fatal("found a leader among followers")
	}
}

func TestRotate(t *testing.T) {
	s := []string{"a", "b", "c"}
	for i, want := range []string{"abc", "bca", "cab", "abc"} {
		if got := strings.Join(rotate(s, i), ""); got != want {
			t.Errorf("rotate(abc, %d) = %s, want %s", i, got, want)
		}
	}
	if strings.Join(s, "") != "abc" {
		t.Error("rotate changed its argument")
	}
}

func TestForwardedClients(t *testing.T) {
	for _, c := range []struct{ n, nodes, leader, want int }{
		{1, 3, 0, 0}, {1, 3, 1, 1}, {64, 3, 0, 42}, {64, 3, 1, 43}, {64, 3, 2, 43},
	} {
		if got := forwardedClients(c.n, c.nodes, c.leader); got != c.want {
			t.Errorf("forwardedClients(%d, %d, %d) = %d, want %d", c.n, c.nodes, c.leader, got, c.want)
		}
	}
}

// TestPacedLoad: a paced run never sends more than its schedule allows
// (an upper bound only: a slow machine may send fewer).
func TestPacedLoad(t *testing.T) {
	certFile, keyFile, err := writeThrowawayCert(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	serverCert, _ := tls.LoadX509KeyPair(certFile, keyFile)
	pool, _ := loadCAPool(certFile)
	clientCert, _ := clientCertificate("kes:v1:AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, _, err := startBaseline(ctx, "127.0.0.1:0", serverCert)
	if err != nil {
		t.Fatal(err)
	}
	cfg := loadConfig{
		Server: "https://" + addr.String(), RootCAs: pool, ClientCert: clientCert,
		Key: "bench-paced", Op: "create", HTTP: 2, Clients: 4, Rate: 100,
		Warmup: 0, Duration: 400 * time.Millisecond, MaxOps: 100_000,
	}
	res, err := runLoad(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// 100/s for 0.4 s: at most 40 scheduled starts, plus one per client at the edge.
	if res.Errors != 0 || res.Ops > 44 || len(res.Created) > 44 {
		t.Fatalf("paced at 100/s for 400ms: ops=%d created=%d errors=%d", res.Ops, len(res.Created), res.Errors)
	}
}
