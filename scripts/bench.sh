#!/usr/bin/env bash
# bench.sh: `make bench`. Load-tests the local dev node (scripts/dev.sh) with
# generate and decrypt, 64 mTLS clients, HTTP/2 and HTTP/1.1, and compares it
# in the same run with a bare mTLS server doing only the KES crypto (the
# ceiling on this machine). Prints ops/s, p50, p99, peak RSS and the ratio
# kmsd/baseline per cell. A benchmark, not a test: it fails only if requests
# fail, never because of the numbers.
#
# Environment:
#   BENCH_DURATION   measured time per cell and server (default 10s)
#   BENCH_CLIENTS    concurrent clients (default 64)
#   BENCH_ARGS       extra flags for `kmsd-bench compare` (e.g. --slices 20)
#   KMSD_DEV_DIR     as for scripts/dev.sh (default .kmsd-dev)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="${KMSD_DEV_DIR:-$ROOT/.kmsd-dev}"
NODE=node1
BENCH="$DEV/bin/kmsd-bench"

log() { printf 'bench.sh: %s\n' "$*" >&2; }

# 1. A running, ready dev node, and its KES_SERVER, KES_API_KEY, KES_CA.
"$ROOT/scripts/dev.sh" up >/dev/null # its log lines go to stderr
# shellcheck disable=SC1091
source "$DEV/env"

# 2. The load generator (also the baseline server).
log "building kmsd-bench"
mkdir -p "$DEV/bin"
(cd "$ROOT" && go build -o "$BENCH" ./cmd/kmsd-bench)

# 3. The baseline serves the node's own certificate and key when they are
# there (same key type and chain as kmsd, so TLS costs the same); otherwise
# kmsd-bench makes a throw-away self-signed ECDSA P-256 certificate.
baseline_tls=()
if [[ -s "$DEV/certs/$NODE.crt" && -s "$DEV/certs/$NODE.key" ]]; then
	baseline_tls=(--baseline-cert "$DEV/certs/$NODE.crt" --baseline-key "$DEV/certs/$NODE.key" --baseline-ca "$KES_CA")
fi

cores="$(nproc 2>/dev/null || echo '?')"
log "this machine has $cores CPU core(s); the load generator, kmsd and the baseline share them,"
log "so absolute numbers are pessimistic: the kmsd/baseline ratio is the result"

# 4. The matrix {generate, decrypt} x {HTTP/2, HTTP/1.1}, kmsd vs baseline.
# shellcheck disable=SC2086
exec "$BENCH" compare \
	--server "$KES_SERVER" --api-key "$KES_API_KEY" --ca "$KES_CA" \
	--pid-file "$DEV/$NODE.pid" \
	--key kmsd-bench \
	--clients "${BENCH_CLIENTS:-64}" \
	--duration "${BENCH_DURATION:-10s}" \
	"${baseline_tls[@]}" ${BENCH_ARGS:-}
