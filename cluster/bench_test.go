package cluster

import (
	"context"
	"fmt"
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
