#!/usr/bin/env bash
# bench.sh: `make bench`. Benchmarks the local three-node dev cluster
# (scripts/dev.sh) with cmd/kmsd-bench and prints the numbers. A
# benchmark, not a test: it fails only if requests fail, never because of
# the numbers. Parts (run in this order, each bounded in time):
#
#   compare   generate and decrypt, 64 clients, HTTP/2 and HTTP/1.1, against
#             node1 and, in the same run (alternating slices), against a
#             bare mTLS server doing only the KES crypto (the ceiling on
#             this machine): ops/s, p50, p99, peak RSS and the ratio
#   create    key-create throughput and p50/p99 at 1 and 64 clients, spread
#             over all three nodes (most creates are forwarded to the
#             leader) vs the leader only, alternating slices
#   nodes     generate and decrypt ops/s against one node vs all three
#   failover  SIGKILL the leader (found through kmsd_raft_state) while
#             creates hit the other two nodes every 5 ms; time from the
#             kill to the first successful write; the node is restarted
#             with `scripts/dev.sh up` between kills
#
# The benchmark keys the create and failover parts make are deleted again.
#
# Environment:
#   BENCH_PARTS      comma-separated subset of the parts above (default: all)
#   BENCH_DURATION   measured time per cell and target (default 5s)
#   BENCH_CLIENTS    concurrent clients for compare and nodes (default 64)
#   BENCH_CREATE_CLIENTS  client counts for create (default 1,64)
#   BENCH_TRIALS     leader kills in the failover part (default 3)
#   BENCH_ARGS       extra flags for `kmsd-bench compare` (e.g. --slices 20)
#   KMSD_DEV_DIR     as for scripts/dev.sh (default .kmsd-dev)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="$(realpath -m "${KMSD_DEV_DIR:-$ROOT/.kmsd-dev}")"
BENCH="$DEV/bin/kmsd-bench"
PARTS="${BENCH_PARTS:-compare,create,nodes,failover}"
DURATION="${BENCH_DURATION:-5s}"
CLIENTS="${BENCH_CLIENTS:-64}"
PART_TIMEOUT=600 # seconds; every part is far shorter with the defaults

log() { printf 'bench.sh: %s\n' "$*" >&2; }

for p in ${PARTS//,/ }; do
	case "$p" in
	compare | create | nodes | failover) ;;
	*) log "unknown part \"$p\" in BENCH_PARTS (want compare, create, nodes, failover)"; exit 2 ;;
	esac
done
want() { [[ ",$PARTS," == *",$1,"* ]]; }

# 1. A running, ready three-node cluster, and its KES_SERVER (all three
# endpoints), KES_API_KEY, KES_CA.
"$ROOT/scripts/dev.sh" up >/dev/null # its log lines go to stderr
# shellcheck disable=SC1091
source "$DEV/env"
export KES_SERVER KES_API_KEY KES_CA
export KMSD_PID_FILES="$DEV/node1.pid,$DEV/node2.pid,$DEV/node3.pid"

# 2. The load generator (also the baseline server).
log "building kmsd-bench"
mkdir -p "$DEV/bin"
(cd "$ROOT" && go build -o "$BENCH" ./cmd/kmsd-bench)

cores="$(nproc 2>/dev/null || echo '?')"
log "this machine has $cores CPU core(s); the load generator, the three nodes and the baseline share them,"
log "so absolute numbers are pessimistic: compare the ratios, measured in the same run"

failed=()
part() {
	local name=$1
	shift
	printf '\n===== %s =====\n' "$name"
	local t0=$SECONDS rc=0
	timeout --kill-after=10 "$PART_TIMEOUT" "$@" || rc=$?
	if ((rc == 0)); then
		printf '(%s took %ds)\n' "$name" $((SECONDS - t0))
	else
		printf '(%s FAILED after %ds, exit %d)\n' "$name" $((SECONDS - t0)) "$rc"
		failed+=("$name")
	fi
}

if want compare; then
	# The baseline serves the nodes' API certificate and key (same key type
	# and chain as kmsd, so TLS costs the same).
	baseline_tls=()
	if [[ -s "$DEV/certs/server.crt" && -s "$DEV/certs/server.key" ]]; then
		baseline_tls=(--baseline-cert "$DEV/certs/server.crt" --baseline-key "$DEV/certs/server.key" --baseline-ca "$KES_CA")
	fi
	# shellcheck disable=SC2086
	part "compare: node1 vs the bare mTLS crypto baseline" "$BENCH" compare \
		--server "${KES_SERVER%%,*}" --pid-file "$DEV/node1.pid" \
		--key kmsd-bench --clients "$CLIENTS" --duration "$DURATION" \
		"${baseline_tls[@]}" ${BENCH_ARGS:-}
fi
if want create; then
	part "create: key-create throughput, all nodes vs leader only" "$BENCH" create \
		--clients "${BENCH_CREATE_CLIENTS:-1,64}" --duration "$DURATION"
fi
if want nodes; then
	part "nodes: generate/decrypt, one node vs all three" "$BENCH" nodes \
		--clients "$CLIENTS" --duration "$DURATION"
fi
if want failover; then
	part "failover: leader SIGKILL -> first successful write" "$BENCH" failover \
		--trials "${BENCH_TRIALS:-3}" \
		--restart "KMSD_DEV_SKIP_BUILD=1 KMSD_DEV_DIR='$DEV' '$ROOT/scripts/dev.sh' up >/dev/null"
	# Whatever happened, leave the cluster running with every node.
	KMSD_DEV_SKIP_BUILD=1 "$ROOT/scripts/dev.sh" up >/dev/null 2>&1 || log "WARNING: scripts/dev.sh up failed after the failover part"
fi

if ((${#failed[@]} > 0)); then
	log "failed: ${failed[*]}"
	exit 1
fi
