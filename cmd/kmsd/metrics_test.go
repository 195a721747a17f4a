package main

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/seal"
)

func TestNodeCollector(t *testing.T) {
	n := &node{cache: seal.NewCache(seal.CacheConfig{})}
	defer n.cache.Close()
	key, err := seal.NewKey(seal.AES256, nil)
	if err != nil {
		t.Fatal(err)
	}
	load := func(context.Context) (*seal.Key, error) { return key, nil }
	for range 3 { // one miss (a load), then two hits
		if _, err := n.cache.Get(context.Background(), "k", load); err != nil {
			t.Fatal(err)
		}
	}
	gather := func() map[string]float64 {
		reg := prometheus.NewRegistry()
		reg.MustRegister(nodeCollector{n})
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			if len(mf.GetMetric()) != 1 {
				t.Fatalf("%s has %d samples; kms-go needs exactly one", mf.GetName(), len(mf.GetMetric()))
			}
			m := mf.GetMetric()[0]
			got[mf.GetName()] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return got
	}
	want := map[string]float64{
		"kmsd_cache_hits_total": 2, "kmsd_cache_misses_total": 1, "kmsd_cache_loads_total": 1,
		"kmsd_cache_evictions_total": 0, "kmsd_cache_entries": 1, "kmsd_sealed": 1,
	}
	got := gather()
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s = %v, want %v", name, got[name], v)
		}
	}
	kr, _, err := seal.Init(context.Background(), seal.NewSoftware(make([]byte, 32), "test"))
	if err != nil {
		t.Fatal(err)
	}
	n.keyring.Store(kr)
	if got := gather()["kmsd_sealed"]; got != 0 {
		t.Errorf("kmsd_sealed = %v after unseal, want 0", got)
	}
}
