package cluster

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/fsm"
)

// BenchmarkApplyCreate measures one CreateKey through raft (bolt fsync)
// and the FSM (badger fsync) on a single voter, sequentially and with
// concurrent proposers (raft then batches entries).
func BenchmarkApplyCreate(b *testing.B) {
	for _, par := range []int{1, 16} {
		b.Run(fmt.Sprintf("proposers=%d", par), func(b *testing.B) {
			tn := newTestNode(b, "bench", true, nil)
			tn.waitLeader()
			var seq atomic.Uint64
			b.SetParallelism(par) // × GOMAXPROCS goroutines
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := seq.Add(1)
					k := key(fmt.Sprint("bench-", i), byte(i))
					k.RequestID[1], k.RequestID[2] = byte(i>>8), byte(i>>16)
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					res, err := tn.node.Apply(ctx, &fsm.CreateKey{Key: k})
					cancel()
					if err != nil || res.Code != fsm.CodeOK {
						b.Errorf("Apply: %+v %v", res, err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "creates/s")
		})
	}
}

// BenchmarkForwardedCreate measures CreateKey on a three-node mTLS
// cluster, proposed on a follower (forwarded) and on the leader, with 1
// and 64 concurrent proposers, reporting p50/p99 latency.
func BenchmarkForwardedCreate(b *testing.B) {
	ca := newTestCA(b, "cluster CA")
	nodes, _ := newTLSCluster(b, ca, 3, nil)
	leader := leaderOf(b, nodes...)
	follower := nodes[0]
	if follower == leader {
		follower = nodes[1]
	}
	var seq atomic.Uint64
	for _, on := range []*testNode{follower, leader} {
		role := "follower"
		if on == leader {
			role = "leader"
		}
		for _, par := range []int{1, 64} {
			b.Run(fmt.Sprintf("on=%s/clients=%d", role, par), func(b *testing.B) {
				var mu sync.Mutex
				var lat []time.Duration
				b.SetParallelism(max(1, par/runtime.GOMAXPROCS(0)))
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						i := seq.Add(1)
						k := key(fmt.Sprint("fwd-", i), byte(i))
						k.RequestID[1], k.RequestID[2], k.RequestID[3] = byte(i>>8), byte(i>>16), byte(i>>24)
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						t0 := time.Now()
						res, err := on.node.Apply(ctx, &fsm.CreateKey{Key: k})
						d := time.Since(t0)
						cancel()
						if err != nil || res.Code != fsm.CodeOK {
							b.Errorf("Apply: %+v %v", res, err)
							return
						}
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
					}
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "creates/s")
				slices.Sort(lat)
				if len(lat) > 0 {
					b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
					b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
				}
			})
		}
	}
}
