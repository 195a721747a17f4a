package main

import (
	"github.com/prometheus/client_golang/prometheus"

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
