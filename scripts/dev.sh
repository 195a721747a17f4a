#!/usr/bin/env bash
# dev.sh: a local three-node kmsd cluster for development, under .kmsd-dev/.
#
#   scripts/dev.sh up [NODE...]    build kmsd, create what is missing (one
#                                  SoftHSM token per node, the API CA, server
#                                  certificate and admin API key, the cluster
#                                  CA and node certificates, the configs),
#                                  `kmsd init` node1 once, start every node
#                                  that is not running (node1 first; node2 and
#                                  node3 join by themselves), wait until all
#                                  are ready and print how to talk to them
#   scripts/dev.sh down [NODE...]  stop the nodes (default: all; state kept)
#   scripts/dev.sh status          per node: pid, readiness, raft role, term,
#                                  applied index
#   scripts/dev.sh clean           stop everything and delete .kmsd-dev/
#
# Layout (node N = 1, 2, 3; API port 7373/7383/7393, cluster port
# 7374/7384/7394, all on 127.0.0.1):
#
#   .kmsd-dev/bin/kmsd                    the binary (rebuilt by every `up`)
#   .kmsd-dev/certs/ca.{crt,key}          API CA (clients verify the nodes with it)
#   .kmsd-dev/certs/server.{crt,key}      API server certificate (127.0.0.1, localhost), shared
#   .kmsd-dev/certs/admin.{crt,key,txt}   admin API key (kes:v1:...) and its identity
#   .kmsd-dev/certs/cluster-ca.{crt,key}  cluster CA: the only CA trusted on the node channel
#   .kmsd-dev/certs/nodeN.{crt,key}       node certificates (IP SAN 127.0.0.1, serverAuth+clientAuth)
#   .kmsd-dev/nodeN/hsm/                  nodeN's own SoftHSM token (kmsd-nodeN), pin, so-pin
#   .kmsd-dev/nodeN/data/                 nodeN's data_dir
#   .kmsd-dev/nodeN.yaml .pid .log        config, pid file, log
#   .kmsd-dev/env                         KES_* and MINIO_KMS_KES_* for all three endpoints
#
# Everything is created once and reused, so `up` is idempotent: run again,
# it restarts any node that is not running and waits until all are ready.
# `down node2` followed by `up` is the way to play with failover.
#
# Environment:
#   KMSD_DEV_DIR      state directory (default .kmsd-dev in the repository)
#   KMSD_DEV_TIMEOUT  seconds to wait for readiness (default 120)
#   KMSD_DEV_SKIP_BUILD=1  reuse .kmsd-dev/bin/kmsd if it exists (scripts/bench.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="$(realpath -m "${KMSD_DEV_DIR:-$ROOT/.kmsd-dev}")"
BIN="$DEV/bin/kmsd"
NODES=(node1 node2 node3)
KEY_LABEL="kmsd-wrap"
DEFAULT_KEY="minio-default-key"
TIMEOUT="${KMSD_DEV_TIMEOUT:-120}"
# Bump when the generated configs change shape; older ones are rewritten.
LAYOUT="# dev.sh layout 3 (three nodes, audit file, scheduled snapshots)"

log() { printf 'dev.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

idx() { echo "${1#node}"; }
api_port() { echo $((7373 + 10 * ($(idx "$1") - 1))); }
cluster_port() { echo $((7374 + 10 * ($(idx "$1") - 1))); }
api_url() { echo "https://127.0.0.1:$(api_port "$1")"; }
endpoints() {
	local n out=()
	for n in "${NODES[@]}"; do out+=("$(api_url "$n")"); done
	(IFS=,; echo "${out[*]}")
}

# check_nodes: every argument must be one of NODES.
check_nodes() {
	local a n
	for a in "$@"; do
		for n in "${NODES[@]}"; do [[ $a == "$n" ]] && continue 2; done
		die "unknown node \"$a\" (want one of ${NODES[*]})"
	done
}

ensure_softhsm() {
	if [[ -e /usr/lib/softhsm/libsofthsm2.so ]] && command -v softhsm2-util >/dev/null && command -v pkcs11-tool >/dev/null; then
		return
	fi
	[[ $(id -u) -eq 0 ]] || die "SoftHSM2 is missing: install the Debian packages softhsm2 and opensc (run as root to let this script do it)"
	log "installing softhsm2 and opensc (Debian packages)"
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 opensc >/dev/null
}

build() {
	if [[ -n ${KMSD_DEV_SKIP_BUILD:-} && -x $BIN ]]; then
		return
	fi
	log "building kmsd"
	mkdir -p "$DEV/bin"
	local version commit
	version="$(git -C "$ROOT" describe --tags --always --dirty 2>/dev/null || echo dev)"
	commit="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || true)"
	(cd "$ROOT" && go build -ldflags "-X main.version=$version -X main.commit=$commit" -o "$BIN.new" ./cmd/kmsd)
	# Replace, never overwrite in place: running nodes keep their inode.
	mv -f "$BIN.new" "$BIN"
}

# migrate: a .kmsd-dev made by the single-node dev.sh used certs/node1.*
# as the API server certificate and a config with cluster.bootstrap. Keep
# its data (node1 becomes the first member of the three-node cluster).
migrate() {
	local d="$DEV/certs"
	if [[ -s $d/node1.crt && ! -e $d/server.crt && ! -e $d/cluster-ca.crt ]]; then
		log "migrating a single-node .kmsd-dev: certs/node1.* becomes the API server certificate certs/server.*"
		mv "$d/node1.crt" "$d/server.crt"
		mv "$d/node1.key" "$d/server.key"
	fi
}

ensure_token() {
	local n=$1 dir="$DEV/$1/hsm"
	mkdir -p "$dir"
	chmod 700 "$DEV/$n" "$dir"
	local f
	for f in pin so-pin; do
		if [[ ! -s "$dir/$f" ]]; then
			(umask 077; head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/$f")
		fi
	done
	KMSD_HSM_PIN="$(cat "$dir/pin")" KMSD_HSM_SO_PIN="$(cat "$dir/so-pin")" \
		"$ROOT/scripts/softhsm-init.sh" "$dir" "kmsd-$n" "$KEY_LABEL" >/dev/null
}

# new_ca DIR NAME CN: a self-signed P-256 CA DIR/NAME.{crt,key}.
new_ca() {
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
		-subj "/CN=$3" -keyout "$1/$2.key" -out "$1/$2.crt" 2>/dev/null
	chmod 600 "$1/$2.key"
}

# new_cert DIR CA NAME CN SAN: DIR/NAME.{crt,key} signed by DIR/CA, with
# the given subjectAltName and both serverAuth and clientAuth.
new_cert() {
	local d=$1 ca=$2 name=$3
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$4" \
		-keyout "$d/$name.key" -out "$d/$name.csr" 2>/dev/null
	openssl x509 -req -in "$d/$name.csr" -CA "$d/$ca.crt" -CAkey "$d/$ca.key" -CAcreateserial \
		-days 365 -out "$d/$name.crt" \
		-extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\nbasicConstraints=critical,CA:FALSE\n' "$5") 2>/dev/null
	rm -f "$d/$name.csr"
	chmod 600 "$d/$name.key"
}

ensure_certs() {
	local d="$DEV/certs" n
	mkdir -p "$d"
	if [[ ! -s "$d/ca.crt" ]]; then
		log "creating the API CA"
		new_ca "$d" ca "kmsd dev CA"
	fi
	if [[ ! -s "$d/server.crt" ]]; then
		log "creating the API server certificate (SANs 127.0.0.1, localhost)"
		new_cert "$d" ca server "kmsd dev server" "IP:127.0.0.1,DNS:localhost"
	fi
	if [[ ! -s "$d/admin.crt" ]]; then
		log "creating the admin API key"
		"$BIN" identity new --key "$d/admin.key" --cert "$d/admin.crt" admin >"$d/admin.txt"
		chmod 600 "$d/admin.txt"
	fi
	if [[ ! -s "$d/cluster-ca.crt" ]]; then
		log "creating the cluster CA"
		new_ca "$d" cluster-ca "kmsd dev cluster CA"
	fi
	for n in "${NODES[@]}"; do
		if [[ ! -s "$d/$n.crt" ]]; then
			log "creating the node certificate for $n (SAN 127.0.0.1)"
			new_cert "$d" cluster-ca "$n" "$n" "IP:127.0.0.1,DNS:localhost"
		fi
	done
}

admin_key() { awk '/^API key:/ {print $3}' "$DEV/certs/admin.txt"; }
admin_id() { awk '/^Identity:/ {print $2}' "$DEV/certs/admin.txt"; }

ensure_config() {
	local n=$1 cfg="$DEV/$1.yaml" p
	if [[ -s $cfg ]] && grep -qxF "$LAYOUT" "$cfg"; then
		return
	fi
	[[ -s $cfg ]] && log "rewriting $cfg (made by an older dev.sh)"
	{
		cat <<EOF
$LAYOUT
# kmsd development node $n (generated by scripts/dev.sh; paths are relative to this file)
address: 127.0.0.1:$(api_port "$n")
admin:
  identity: $(admin_id)
tls:
  key: certs/server.key
  cert: certs/server.crt
  ca: certs/ca.crt
cache:
  expiry:
    any: 5m
    unused: 30s
log:
  error: INFO
  audit: "off"
keys:
  - name: $DEFAULT_KEY
hsm:
  module: /usr/lib/softhsm/libsofthsm2.so
  token: kmsd-$n
  key: $KEY_LABEL
  pin_file: $n/hsm/pin
data_dir: $n/data
cluster:
  node_id: $n
  address: 127.0.0.1:$(cluster_port "$n")
  peers:
EOF
		for p in "${NODES[@]}"; do
			printf '    - 127.0.0.1:%s\n' "$(cluster_port "$p")"
		done
		cat <<EOF
  tls:
    cert: certs/$n.crt
    key: certs/$n.key
    ca: certs/cluster-ca.crt
audit:
  file: $n/audit.ndjson          # one NDJSON event per request
  on_failure: continue
error_log:
  file: $n/error.ndjson
snapshot:
  dir: $n/snapshots
  interval: 10m
  retention: 6
EOF
	} >"$cfg.tmp"
	mv "$cfg.tmp" "$cfg"
}

softhsm_conf() { echo "$DEV/$1/hsm/softhsm2.conf"; }

# pid_of NODE: the pid of the node's running kmsd, or nothing. The pid
# file alone is not trusted (pids are reused): the process must be a kmsd
# started with this node's config.
pid_of() {
	local pidf="$DEV/$1.pid" pid
	[[ -s $pidf ]] || return 0
	pid="$(cat "$pidf")"
	[[ $pid =~ ^[0-9]+$ ]] || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--config $DEV/$1.yaml" || return 0
	echo "$pid"
}
running() { [[ -n "$(pid_of "$1")" ]]; }

# alive NODE: is the process in the pid file there? Right after start the
# pid is still the forked shell or setsid about to exec kmsd, so this is
# what wait_ready checks; pid_of verifies the command line too.
alive() {
	local pid
	pid="$(cat "$DEV/$1.pid" 2>/dev/null || true)"
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]]
}

# has_state NODE: does the node have any data (raft state, stanza, marker)?
has_state() {
	local d="$DEV/$1/data"
	[[ -d $d ]] && [[ -n "$(ls -A "$d" 2>/dev/null)" ]]
}

# need_init: true when no node has any state. `kmsd init` runs on node1
# only then (once): a wiped node1 of a running cluster re-joins instead,
# like node2 and node3.
need_init() {
	local n
	for n in "${NODES[@]}"; do
		if has_state "$n"; then return 1; fi
	done
	return 0
}

init_node1() {
	log "initialising node1: creating the root key and sealing it under node1's HSM key"
	SOFTHSM2_CONF="$(softhsm_conf node1)" "$BIN" init --config "$DEV/node1.yaml" >&2 ||
		die "kmsd init failed on node1"
}

start() {
	local n=$1 pid
	if pid="$(pid_of "$n")" && [[ -n $pid ]]; then
		log "$n is running (pid $pid)"
		return
	fi
	log "starting $n (API $(api_url "$n"), cluster 127.0.0.1:$(cluster_port "$n"))"
	# setsid: the node leaves this shell's process group, so a Ctrl-C in
	# the terminal that ran `make run` or `make bench` does not stop it.
	SOFTHSM2_CONF="$(softhsm_conf "$n")" setsid "$BIN" server --config "$DEV/$n.yaml" \
		</dev/null >>"$DEV/$n.log" 2>&1 &
	echo $! >"$DEV/$n.pid"
}

curl_admin() {
	curl -sS --max-time 5 --cacert "$DEV/certs/ca.crt" --cert "$DEV/certs/admin.crt" --key "$DEV/certs/admin.key" "$@"
}

http_code() { curl_admin -o /dev/null -w '%{http_code}' "$@" 2>/dev/null || true; }

# ready NODE: unsealed (GET /v1/ready 200) and serving keys (the
# pre-defined default key describes).
ready() {
	local url
	url="$(api_url "$1")"
	[[ "$(http_code "$url/v1/ready")" == 200 ]] &&
		[[ "$(http_code "$url/v1/key/describe/$DEFAULT_KEY")" == 200 ]]
}

fail_node() {
	local n=$1
	shift
	log "---- last 30 lines of $DEV/$n.log ----"
	tail -n 30 "$DEV/$n.log" >&2 || true
	log "----"
	die "$n $*; see $DEV/$n.log"
}

# wait_ready NODE...: wait (bounded by KMSD_DEV_TIMEOUT) until every given
# node is ready; fail at once if one exits.
wait_ready() {
	local pending=("$@") deadline=$((SECONDS + TIMEOUT)) n left
	while ((${#pending[@]} > 0)); do
		left=()
		for n in "${pending[@]}"; do
			alive "$n" || fail_node "$n" "exited"
			if ready "$n"; then
				log "$n is ready ($(api_url "$n"))"
			else
				left+=("$n")
			fi
		done
		pending=("${left[@]+"${left[@]}"}")
		((${#pending[@]} == 0)) && return
		if ((SECONDS >= deadline)); then
			for n in "${pending[@]}"; do
				log "$n: GET /v1/ready -> $(http_code "$(api_url "$n")/v1/ready")"
			done
			fail_node "${pending[0]}" "did not become ready within ${TIMEOUT}s (still waiting for: ${pending[*]})"
		fi
		sleep 0.5
	done
}

# metric NODE NAME: one kmsd_* sample from the node's /v1/metrics.
metric() {
	# awk reads everything (no early exit): curl must not fail on a closed pipe.
	{ curl_admin "$(api_url "$1")/v1/metrics" 2>/dev/null || true; } | awk -v m="$2" '$1 == m {v = $2} END {print v}'
}

role_name() {
	case "${1:-}" in
	0) echo follower ;; 1) echo candidate ;; 2) echo leader ;; 3) echo shutdown ;; *) echo "?" ;;
	esac
}

check_members() {
	local voters
	voters="$(metric node1 kmsd_raft_voters)"
	if [[ -n $voters && $voters != 3 ]]; then
		log "WARNING: the cluster has $voters voter(s), not 3; see: $BIN cluster status --config $DEV/node1.yaml"
	fi
}

write_env() {
	local eps
	eps="$(endpoints)"
	cat >"$DEV/env.tmp" <<EOF
# kmsd development cluster (generated by scripts/dev.sh); source it.
export KES_SERVER=$eps
export KES_API_KEY=$(admin_key)
export KES_CA=$DEV/certs/ca.crt
export MINIO_KMS_KES_ENDPOINT=$eps
export MINIO_KMS_KES_API_KEY=$(admin_key)
export MINIO_KMS_KES_CAPATH=$DEV/certs/ca.crt
export MINIO_KMS_KES_KEY_NAME=$DEFAULT_KEY
EOF
	chmod 600 "$DEV/env.tmp"
	mv "$DEV/env.tmp" "$DEV/env"
}

usage_text() {
	local n
	echo
	echo "kmsd is running: three nodes on loopback"
	echo
	for n in "${NODES[@]}"; do
		printf '  %s  %s  cluster 127.0.0.1:%s  pid %s  log %s\n' "$n" "$(api_url "$n")" \
			"$(cluster_port "$n")" "$(pid_of "$n")" "$DEV/$n.log"
	done
	cat <<EOF

  source $DEV/env        # KES_SERVER and MINIO_KMS_KES_ENDPOINT list all three nodes

Generate a data key under the default key (any node; writes are forwarded to the leader):

  curl --cacert $DEV/certs/ca.crt --cert $DEV/certs/admin.crt --key $DEV/certs/admin.key \\
       -X POST -d '{}' $(api_url node2)/v1/key/generate/$DEFAULT_KEY

The kes CLI (reads KES_SERVER and KES_API_KEY; Go trusts SSL_CERT_FILE):

  SSL_CERT_FILE=$DEV/certs/ca.crt kes key ls

The cluster (role, leader, term, indexes, members and their health):

  $BIN cluster status --config $DEV/node1.yaml

Stop one node with: scripts/dev.sh down node2   (scripts/dev.sh up brings it back)
MinIO: start it with the MINIO_KMS_KES_* variables from $DEV/env.
Status: scripts/dev.sh status     Stop all: make stop     Delete all: make clean
EOF
}

up() {
	local want=("$@")
	((${#want[@]} > 0)) || want=("${NODES[@]}")
	check_nodes "${want[@]}"
	ensure_softhsm
	command -v openssl >/dev/null || die "openssl is required"
	command -v curl >/dev/null || die "curl is required"
	command -v setsid >/dev/null || die "setsid (util-linux) is required"
	mkdir -p "$DEV"
	chmod 700 "$DEV"
	build
	migrate
	local n
	for n in "${NODES[@]}"; do ensure_token "$n"; done
	ensure_certs
	for n in "${NODES[@]}"; do ensure_config "$n"; done
	if need_init; then
		init_node1
		# A new cluster: node1 bootstraps it; the others join it once it
		# is up (they would also retry until it is).
		start node1
		wait_ready node1
	fi
	for n in "${want[@]}"; do start "$n"; done
	wait_ready "${want[@]}"
	check_members
	write_env
	usage_text
}

stop_nodes() {
	local n pid pids=() names=()
	for n in "$@"; do
		pid="$(pid_of "$n")"
		if [[ -n $pid ]]; then
			log "stopping $n (pid $pid)"
			kill -TERM "$pid" 2>/dev/null || true
			pids+=("$pid")
			names+=("$n")
		else
			log "$n is not running"
			rm -f "$DEV/$n.pid"
		fi
	done
	local i
	for _ in $(seq 1 100); do
		for i in "${!pids[@]}"; do
			kill -0 "${pids[$i]}" 2>/dev/null || { rm -f "$DEV/${names[$i]}.pid"; unset "pids[$i]"; }
		done
		((${#pids[@]} == 0)) && return
		sleep 0.1
	done
	for i in "${!pids[@]}"; do
		log "${names[$i]} did not stop in 10s; killing it"
		kill -KILL "${pids[$i]}" 2>/dev/null || true
		rm -f "$DEV/${names[$i]}.pid"
	done
}

down() {
	local want=("$@")
	((${#want[@]} > 0)) || want=("${NODES[@]}")
	check_nodes "${want[@]}"
	stop_nodes "${want[@]}"
}

status() {
	local n pid code state
	printf '%-6s %-24s %-8s %-6s %-10s %-6s %s\n' node api pid ready role term applied
	for n in "${NODES[@]}"; do
		pid="$(pid_of "$n")"
		if [[ -z $pid ]]; then
			printf '%-6s %-24s %-8s %-6s %-10s %-6s %s\n' "$n" "$(api_url "$n")" - - down - -
			continue
		fi
		code="$(http_code "$(api_url "$n")/v1/ready")"
		state="$(metric "$n" kmsd_raft_state)"
		printf '%-6s %-24s %-8s %-6s %-10s %-6s %s\n' "$n" "$(api_url "$n")" "$pid" "$code" \
			"$(role_name "$state")" "$(metric "$n" kmsd_raft_term)" "$(metric "$n" kmsd_raft_applied_index)"
	done
	echo
	echo "more: $BIN cluster status --config $DEV/node1.yaml"
}

cmd="${1:-}"
shift || true
case "$cmd" in
up) up "$@" ;;
down) down "$@" ;;
status) status ;;
clean)
	[[ $# -eq 0 ]] || die "usage: $0 clean"
	stop_nodes "${NODES[@]}"
	rm -rf "$DEV"
	;;
*) die "usage: $0 up [NODE...] | down [NODE...] | status | clean" ;;
esac
