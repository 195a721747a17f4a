package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistogramExact(t *testing.T) {
	var h histogram
	for v := 100; v >= 1; v-- { // order must not matter
		h.record(time.Duration(v))
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{
		{0.01, 1}, {0.5, 50}, {0.505, 51}, {0.99, 99}, {0.999, 100}, {1, 100},
	} {
		if got := h.quantile(tc.q); got != tc.want {
			t.Errorf("quantile(%v) = %d, want %d", tc.q, got, tc.want)
		}
	}
	var empty histogram
	if got := empty.quantile(0.5); got != 0 {
		t.Errorf("empty quantile = %d, want 0", got)
	}
}

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	check := func(v uint64) {
		i := histIndex(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("histIndex(%d) = %d, out of range", v, i)
		}
		if i < prev {
			t.Fatalf("histIndex not monotonic at %d", v)
		}
		lo, hi := histBounds(i)
		if v < lo || v > hi {
			t.Fatalf("value %d in bucket %d [%d, %d]", v, i, lo, hi)
		}
		if v >= 2*histSub && float64(hi-lo)/float64(lo) > 1.0/histSub {
			t.Fatalf("bucket %d [%d, %d] wider than 1/%d", i, lo, hi, histSub)
		}
	}
	for v := uint64(0); v < 100_000; v++ {
		check(v)
		prev = histIndex(v)
	}
	prev = -1
	for _, v := range []uint64{1 << 20, 1<<20 + 1, 3 << 30, 1<<63 - 1, 1 << 63, ^uint64(0)} {
		check(v)
	}
}

// TestHistogramQuantiles compares with the nearest-rank quantile of the
// raw sorted values: they must agree within the bucket precision.
func TestHistogramQuantiles(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var a, b histogram
	vals := make([]time.Duration, 0, 20000)
	for i := range 20000 {
		// Log-uniform between 10 µs and 100 ms, like latencies.
		v := time.Duration(10e3 * math.Pow(10, r.Float64()*4))
		vals = append(vals, v)
		if i%2 == 0 {
			a.record(v)
		} else {
			b.record(v)
		}
	}
	a.merge(&b)
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		rank := int(math.Ceil(q*float64(len(vals)))) - 1
		want := vals[rank]
		got := a.quantile(q)
		if d := float64(got-want) / float64(want); d > 1.0/histSub || d < -1.0/histSub {
			t.Errorf("quantile(%v) = %v, exact %v (error %.3f)", q, got, want, d)
		}
	}
	if a.n != 20000 || time.Duration(a.max) != vals[len(vals)-1] {
		t.Errorf("n=%d max=%v after merge", a.n, time.Duration(a.max))
	}
}
