package main

import (
	"context"
	"crypto/tls"
	"os"
	"testing"
	"time"
)

// TestLoadAgainstBaseline runs the load generator for a moment against an
// in-process baseline. It checks that requests succeed, never how fast.
func TestLoadAgainstBaseline(t *testing.T) {
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
	addr, done, err := startBaseline(ctx, "127.0.0.1:0", serverCert)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("baseline: %v", err)
		}
	})

	for _, op := range []string{"generate", "decrypt"} {
		for _, proto := range []int{2, 1} {
			t.Run(op+"/"+protoName(proto), func(t *testing.T) {
				cfg := loadConfig{
					Server: "https://" + addr.String(), RootCAs: pool, ClientCert: clientCert,
					Key: "bench-test", Op: op, HTTP: proto, Clients: 4,
					Warmup: 50 * time.Millisecond, Duration: 300 * time.Millisecond,
					MaxOps: 1_000_000, PID: os.Getpid(),
				}
				c := newHTTPClient(&cfg)
				defer c.CloseIdleConnections()
				if err := ensureKey(ctx, c, cfg.Server, cfg.Key); err != nil {
					t.Fatal(err)
				}
				if err := ensureKey(ctx, c, cfg.Server, cfg.Key); err != nil { // exists: fine
					t.Fatal(err)
				}
				res, err := runLoad(ctx, cfg)
				if err != nil {
					t.Fatal(err)
				}
				if res.Ops == 0 || res.Errors != 0 || res.WarmupErrors != 0 {
					t.Fatalf("ops=%d errors=%d warm-up errors=%d kinds=%v", res.Ops, res.Errors, res.WarmupErrors, res.ErrorKinds)
				}
				if !res.HaveServer || res.ServerMem.HWM == 0 {
					t.Errorf("no memory reading for pid %d", cfg.PID)
				}
			})
		}
	}
}

func TestLoadReportsErrors(t *testing.T) {
	// A key that does not exist: the preparation step must say so.
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
	_, err = runLoad(ctx, loadConfig{
		Server: "https://" + addr.String(), RootCAs: pool, ClientCert: clientCert,
		Key: "missing", Op: "decrypt", HTTP: 2, Clients: 1, Duration: time.Millisecond,
	})
	if err == nil {
		t.Fatal("load against a missing key succeeded")
	}
}

func TestProcfs(t *testing.T) {
	m, err := readMem(os.Getpid())
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	if m.HWM < m.RSS || m.RSS == 0 {
		t.Errorf("VmHWM %d < VmRSS %d", m.HWM, m.RSS)
	}
	if _, err := readCPU(os.Getpid()); err != nil {
		t.Error(err)
	}
}
