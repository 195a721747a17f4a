package compat

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestReloadLogLevelAndCache: SIGHUP also applies log.error (the level of
// the server log) and cache.expiry, the KES sections that are not about
// identities or TLS.
func TestReloadLogLevelAndCache(t *testing.T) {
	requireSoftHSM(t)
	n := newNode(t, nodeOptions{Name: "reload-sections"})
	n.start(t, nil)
	n.waitServing(t)
	reloaded := func() int {
		b, err := os.ReadFile(n.logPath)
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Count(b, []byte("configuration reloaded"))
	}

	// log.error: ERROR hides the INFO line of the reload itself. The
	// cache change in the same file shows that the reload happened.
	before := reloaded()
	cfg := n.readConfig(t)
	cfg.Log.Error = "ERROR"
	cfg.Cache.Expiry.Any = "1s"
	n.writeConfig(t, cfg)
	n.sighup(t)

	c := n.client(mustAPIKey(t, adminAPIKey))
	ctx := context.Background()
	evictions := func() float64 {
		resp, err := n.adminHTTP().Get(n.url("/v1/metrics"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "kmsd_cache_evictions_total "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatalf("kmsd_cache_evictions_total %q: %v", v, err)
				}
				return f
			}
		}
		t.Fatalf("no kmsd_cache_evictions_total in /v1/metrics")
		return 0
	}
	e0 := evictions()
	poll(t, "cache.expiry.any=1s to evict the cached key (the reload applied the cache section)", func() (bool, string) {
		if _, err := c.GenerateKey(ctx, presetKey, nil); err != nil {
			return false, err.Error()
		}
		e := evictions()
		return e > e0, fmt.Sprintf("evictions %v, were %v", e, e0)
	})
	if got := reloaded(); got != before {
		t.Fatalf("with log.error: ERROR the INFO line \"configuration reloaded\" was logged (%d times, was %d)", got, before)
	}

	cfg.Log.Error = "INFO"
	n.writeConfig(t, cfg)
	n.sighup(t)
	poll(t, "log.error: INFO to log the reload", func() (bool, string) {
		got := reloaded()
		return got > before, fmt.Sprintf("%d lines, were %d", got, before)
	})
	n.requireAlive(t, "SIGHUP (log level and cache)")
}
