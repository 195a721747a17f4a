package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/internal/softhsmtest"
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

// gatherOne registers c alone and returns its families, each checked to
// be one unlabelled sample.
func gatherOne(t *testing.T, c prometheus.Collector) map[string]*dto.Metric {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.Metric{}
	for _, mf := range mfs {
		if len(mf.GetMetric()) != 1 || len(mf.GetMetric()[0].GetLabel()) != 0 {
			t.Fatalf("%s: %v; want one unlabelled sample", mf.GetName(), mf.GetMetric())
		}
		out[mf.GetName()] = mf.GetMetric()[0]
	}
	return out
}

func TestHSMMetrics(t *testing.T) {
	m := newHSMMetrics()
	got := gatherOne(t, m)
	if len(got) != 4 || got["kmsd_hsm_last_error_timestamp_seconds"].GetGauge().GetValue() != 0 {
		t.Fatalf("before any operation: %v", got)
	}
	before := time.Now()
	m.observe("open", 2*time.Millisecond, nil)
	m.observe("unwrap", 300*time.Microsecond, nil)
	m.observe("unwrap", time.Millisecond, fmt.Errorf("seal: unseal: %w", hsm.ErrNotAuthentic))
	m.observe("ping", 20*time.Second, context.DeadlineExceeded)
	m.observe("ping", time.Millisecond, fmt.Errorf("x: %w", context.Canceled)) // the caller gave up: not an HSM error
	m.observe("wrap", time.Millisecond, hsm.ErrClosed)                         // shutdown: not an HSM error
	got = gatherOne(t, m)
	h := got["kmsd_hsm_operation_duration_seconds"].GetHistogram()
	if h.GetSampleCount() != 6 || h.GetSampleSum() < 20 || h.GetBucket()[0].GetUpperBound() != 0.0001 {
		t.Errorf("histogram: count %d sum %v first bucket %v", h.GetSampleCount(), h.GetSampleSum(), h.GetBucket()[0].GetUpperBound())
	}
	if n := got["kmsd_hsm_operations_total"].GetCounter().GetValue(); n != 6 {
		t.Errorf("operations = %v, want 6", n)
	}
	if n := got["kmsd_hsm_errors_total"].GetCounter().GetValue(); n != 2 {
		t.Errorf("errors = %v, want 2", n)
	}
	ts := got["kmsd_hsm_last_error_timestamp_seconds"].GetGauge().GetValue()
	if ts < float64(before.Unix()) || ts > float64(time.Now().Unix()+1) {
		t.Errorf("last error timestamp %v, want about now", ts)
	}
}

// TestHSMConfigObserved: every HSM the server opens reports to procHSM.
func TestHSMConfigObserved(t *testing.T) {
	tok := softhsmtest.New(t, "metrics-observe")
	t.Setenv("TEST_KMSD_METRICS_PIN", tok.PIN)
	var c fileConfig
	c.HSM.Module, c.HSM.Token, c.HSM.Key, c.HSM.PINEnv = tok.ModulePath, tok.Label, tok.KeyLabel, "TEST_KMSD_METRICS_PIN"
	hc, err := c.hsmConfig()
	if err != nil {
		t.Fatal(err)
	}
	ops := func() float64 { return gatherOne(t, procHSM)["kmsd_hsm_operations_total"].GetCounter().GetValue() }
	n0 := ops()
	mod, err := hsm.Open(t.Context(), hc)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	if err := mod.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d := ops() - n0; d < 2 {
		t.Fatalf("procHSM saw %v operations for an open and a ping", d)
	}
}
