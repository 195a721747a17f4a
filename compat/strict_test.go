package compat

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Opt-in tests (KMSD_COMPAT_STRICT=1) for behaviour that fails today and
// needs a decision: they assert the requirement and show how it
// is missed.

// TestKesClientQuarantine (opt-in: KMSD_COMPAT_STRICT=1) shows a
// kms-go v0.3.1 limitation that TestClusterFailover's kill schedule
// avoids: one three-endpoint client generates DEKs while the three nodes
// are SIGKILLed one after the other, each restarted and caught up before
// the next (only one node is ever down). kms-go marks an endpoint
// "timed out" for 30 s after a transport error or a 5xx, skips marked
// endpoints, and retries the marked ones only when it sent nothing at all
// — so once the third node dies, the requests it was serving fail
// ("kes: connection error ... connection refused") although the other
// two nodes are up again. The assertion is the product's requirement
// (zero failures with one node down); it fails with kms-go v0.3.1.
func TestKesClientQuarantine(t *testing.T) {
	if os.Getenv("KMSD_COMPAT_STRICT") != "1" {
		t.Skip("opt-in (KMSD_COMPAT_STRICT=1): fails with kms-go v0.3.1's 30 s endpoint quarantine, see the comment")
	}
	c := startCluster(t, 3)
	ctx := ctxT(t)
	cl := c.client(t, c.admin, 0)
	tr := &hostTrace{name: "quarantine", next: cl.HTTPClient.Transport, nodes: c.nodeNames(), at: map[string][]string{}}
	cl.HTTPClient.Transport = tr
	if err := cl.CreateKey(ctx, "quarantine"); err != nil {
		t.Fatal(err)
	}
	c.writeBarrier(t)
	var oks atomic.Int64
	var mu sync.Mutex
	var errs []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), foOpTimeout)
				_, err := cl.GenerateKey(ctx, "quarantine", nil)
				cancel()
				if err != nil {
					mu.Lock()
					errs = append(errs, time.Now().Format("15:04:05.000")+" "+err.Error())
					mu.Unlock()
				} else {
					oks.Add(1)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	time.Sleep(time.Second)
	order := []*node{}
	first := tr.primary()
	for _, n := range c.nodes {
		if n.opts.Name == first {
			order = append([]*node{n}, order...)
		} else {
			order = append(order, n)
		}
	}
	for _, n := range order {
		t.Logf("%s SIGKILL %s", time.Now().Format("15:04:05.000"), n.opts.Name)
		c.kill(t, n)
		time.Sleep(3 * time.Second) // longer than kms-go's own retries (2 x 0.2-1 s) on the dead node
		c.restart(t, n)
		time.Sleep(foSteady)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d generate ok, %d failed; per node: %s", oks.Load(), len(errs), tr.summary())
	if len(errs) > 0 {
		t.Errorf("%d GenerateKey calls failed with one node down at a time; first: %v", len(errs), errs[:min(len(errs), 5)])
	}
}

// TestCreateInFlightAtLeaderKill (opt-in: KMSD_COMPAT_STRICT=1): creates
// sent to the followers while the leader is SIGKILLed. The follower
// cannot know whether a forwarded create reached the dead leader's log,
// but a new leader is elected in ~0.5 s, well within the request's 5 s
// timeout, so the proposing node can settle it by re-proposing the same
// command (same request id: the FSM answers OK to a create whose record
// carries its own request id). Requirement (issue 3 items 3 and 5): every
// such create answers 200. Today each create in flight at the kill
// answers 503 "outcome unknown" at about the time the new leader is
// elected, and none of them exists afterwards; kms-go retries the 503 as a
// new request, and when the first attempt had in fact been applied the
// client gets "key already exists" for a create it sent once.
func TestCreateInFlightAtLeaderKill(t *testing.T) {
	if os.Getenv("KMSD_COMPAT_STRICT") != "1" {
		t.Skip("opt-in (KMSD_COMPAT_STRICT=1): creates in flight at a leader kill answer 503 'outcome unknown' today, see the comment")
	}
	c := startCluster(t, 3)
	type result struct {
		name, via  string
		start, end time.Duration
		status     int
		msg        string
	}
	var bad []result
	total := 0
	for round := range 2 {
		l := c.leader(t)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var mu sync.Mutex
		var results []result
		tk := time.Now().Add(time.Hour) // set at the kill
		var tkMu sync.Mutex
		since := func(x time.Time) time.Duration {
			tkMu.Lock()
			defer tkMu.Unlock()
			return x.Sub(tk)
		}
		g := 0
		for _, f := range c.nodes {
			if f == l {
				continue
			}
			for range 4 {
				raw := f.raw("admin", apiKeyCert(t, c.admin))
				g++
				id := g
				wg.Go(func() {
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						name := fmt.Sprintf("inflight-%d-%d-%d", round, id, i)
						s := time.Now()
						r, err := raw.try("PUT", "/v1/key/create/"+name, nil)
						res := result{name: name, via: f.opts.Name, start: since(s), end: since(time.Now())}
						if err != nil {
							res.msg = err.Error()
						} else {
							res.status = r.Status
							res.msg, _ = errMessage(r.Body)
						}
						mu.Lock()
						results = append(results, res)
						mu.Unlock()
					}
				})
			}
		}
		time.Sleep(time.Second)
		tkMu.Lock()
		tk = time.Now()
		tkMu.Unlock()
		c.kill(t, l)
		nl := c.leader(t)
		t.Logf("round %d: SIGKILL leader %s; new leader %s seen after %v", round, l.opts.Name, nl.opts.Name, time.Since(tk).Round(time.Millisecond))
		time.Sleep(time.Second)
		close(stop)
		wg.Wait()
		c.restart(t, l)
		for _, r := range results {
			if r.status != 200 {
				bad = append(bad, r)
			}
		}
		total += len(results)
	}
	c.writeBarrier(t)
	names := c.nodes[0].keyNames(t)
	var lines []string
	for _, r := range bad {
		_, exists := slices.BinarySearch(names, r.name)
		lines = append(lines, fmt.Sprintf("%s via %s sent %v after the kill, answered after %v: %d %q; exists afterwards: %v",
			r.name, r.via, r.start.Round(time.Millisecond), r.end.Round(time.Millisecond), r.status, r.msg, exists))
	}
	if len(bad) > 0 {
		t.Errorf("%d of %d creates sent to followers did not answer 200 across two leader kills:\n  %s", len(bad), total, strings.Join(lines, "\n  "))
	}
}
