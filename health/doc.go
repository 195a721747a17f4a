// Package health collects the node's health checks into one report:
// liveness (would a restart help?) and readiness (should clients and load
// balancers send this node requests?). Components register small check
// functions; the API's /v1/ready, /v1/health and the cluster status probe
// all read the same report. It depends on nothing of kmsd's.
package health
