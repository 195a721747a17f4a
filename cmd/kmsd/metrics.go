package main

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/seal"
)

// Every family has one sample and no labels: kms-go's Metrics() rejects
// /v1/metrics families (other than the request counters) with more.
var (
	descCacheHits      = prometheus.NewDesc("kmsd_cache_hits_total", "Key lookups answered from the hot cache.", nil, nil)
	descCacheMisses    = prometheus.NewDesc("kmsd_cache_misses_total", "Key lookups not answered from the hot cache.", nil, nil)
	descCacheLoads     = prometheus.NewDesc("kmsd_cache_loads_total", "Keys unsealed from the store into the cache.", nil, nil)
	descCacheEvictions = prometheus.NewDesc("kmsd_cache_evictions_total", "Cache entries dropped (expiry, capacity, delete, restore).", nil, nil)
	descCacheEntries   = prometheus.NewDesc("kmsd_cache_entries", "Unsealed keys in the hot cache.", nil, nil)
	descSealed         = prometheus.NewDesc("kmsd_sealed", "1 while this node is sealed (cannot serve key material), 0 once unsealed.", nil, nil)
)

// nodeCollector exports the cache counters and the seal state, read on
// every scrape.
type nodeCollector struct{ n *node }

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCacheHits, descCacheMisses, descCacheLoads, descCacheEvictions, descCacheEntries, descSealed} {
		ch <- d
	}
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	var st seal.CacheStats
	if c.n.cache != nil {
		st = c.n.cache.Stats()
	}
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	counter(descCacheHits, st.Hits)
	counter(descCacheMisses, st.Misses)
	counter(descCacheLoads, st.Loads)
	counter(descCacheEvictions, st.Evictions)
	ch <- prometheus.MustNewConstMetric(descCacheEntries, prometheus.GaugeValue, float64(st.Entries))
	sealed := 1.0
	if c.n.keyring.Load() != nil {
		sealed = 0
	}
	ch <- prometheus.MustNewConstMetric(descSealed, prometheus.GaugeValue, sealed)
}

// hsmBuckets: a local token answers in well under a millisecond, a network
// HSM in milliseconds; seconds mean trouble.
var hsmBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

var descHSMLastError = prometheus.NewDesc("kmsd_hsm_last_error_timestamp_seconds",
	"Unix time of the last failed HSM operation (0: none since start).", nil, nil)

// hsmMetrics turns hsm.Config.Observe calls into metrics. Every HSM
// operation of the process (open with login, wrap, unwrap, ping) is one
// observation, whatever the caller (unseal, join, init, snapshot verify).
type hsmMetrics struct {
	duration prometheus.Histogram
	ops      prometheus.Counter
	errors   prometheus.Counter
	lastErr  atomic.Int64 // unix nanoseconds, 0 = none
}

func newHSMMetrics() *hsmMetrics {
	return &hsmMetrics{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kmsd_hsm_operation_duration_seconds",
			Help:    "Duration of HSM operations (open with login, wrap, unwrap, ping), waiting for a session included.",
			Buckets: hsmBuckets,
		}),
		ops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmsd_hsm_operations_total",
			Help: "HSM operations (open with login, wrap, unwrap, ping), successful or not.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmsd_hsm_errors_total",
			Help: "HSM operations that failed (a ciphertext that does not authenticate included; a cancelled caller or a closed module not).",
		}),
	}
}

// procHSM collects the HSM observations of this process. It is
// process-wide because the HSM configuration is built from the file
// config (fileConfig.hsmConfig), not from a node; one kmsd process runs
// one node.
var procHSM = newHSMMetrics()

// observe is an hsm.Config.Observe function.
func (m *hsmMetrics) observe(_ string, d time.Duration, err error) {
	m.duration.Observe(d.Seconds())
	m.ops.Inc()
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, hsm.ErrClosed) {
		m.errors.Inc()
		m.lastErr.Store(time.Now().UnixNano())
	}
}

func (m *hsmMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.duration.Describe(ch)
	m.ops.Describe(ch)
	m.errors.Describe(ch)
	ch <- descHSMLastError
}

func (m *hsmMetrics) Collect(ch chan<- prometheus.Metric) {
	m.duration.Collect(ch)
	m.ops.Collect(ch)
	m.errors.Collect(ch)
	ts := 0.0
	if ns := m.lastErr.Load(); ns != 0 {
		ts = float64(ns) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(descHSMLastError, prometheus.GaugeValue, ts)
}
