#!/usr/bin/env bash
# softhsm-init.sh DIR TOKEN_LABEL KEY_LABEL
#
# Creates a SoftHSM2 token for kmsd development and CI:
#   - DIR/softhsm2.conf (tokendir DIR/tokens, file backend, log level ERROR)
#   - a token labelled TOKEN_LABEL with user PIN $KMSD_HSM_PIN
#   - on it an AES-256 key labelled KEY_LABEL: token object, private,
#     sensitive, never extractable, encrypt/decrypt
# and prints, on stdout and nothing else:
#   export SOFTHSM2_CONF=DIR/softhsm2.conf
# so that `eval "$(scripts/softhsm-init.sh ...)"` works.
#
# Environment:
#   KMSD_HSM_PIN      user PIN (required)
#   KMSD_HSM_SO_PIN   security officer PIN; generated (and printed once on
#                     stderr) when unset and a token has to be created
#   KMSD_HSM_MODULE   PKCS#11 module (default /usr/lib/softhsm/libsofthsm2.so)
#
# Idempotent: an existing token is reused (the PIN must match) and an
# existing key is left alone. Needs softhsm2-util (package softhsm2) and
# pkcs11-tool (package opensc); it installs nothing.
#
# Key attributes: pkcs11-tool 0.23 can only add usages, so besides
# CKA_ENCRYPT/CKA_DECRYPT the key keeps SoftHSM's defaults CKA_WRAP,
# CKA_UNWRAP, CKA_SIGN and CKA_VERIFY = true. It is still CKA_TOKEN,
# CKA_PRIVATE, CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE and
# CKA_EXTRACTABLE = false, which is what kmsd checks. hsm.GenerateKey makes
# a key with every other usage false; prefer it for real HSMs.
#
# softhsm2-util takes PINs only as arguments, so they are visible in the
# process list while the token is created; this script is for development
# and CI machines. pkcs11-tool reads them from the environment (env:VAR).
set -euo pipefail

usage() {
	echo "usage: KMSD_HSM_PIN=... $0 DIR TOKEN_LABEL KEY_LABEL" >&2
	exit 2
}

die() {
	echo "softhsm-init: $*" >&2
	exit 1
}

[[ $# -eq 3 ]] || usage
dir=$1
token=$2
key=$3
[[ -n $dir && -n $token && -n $key ]] || usage
(( ${#token} <= 32 )) || die "token label \"$token\" is longer than 32 bytes"
[[ -n ${KMSD_HSM_PIN:-} ]] || die "KMSD_HSM_PIN must be set to the user PIN"
module=${KMSD_HSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[[ -f $module ]] || die "PKCS#11 module $module not found (apt-get install softhsm2, or set KMSD_HSM_MODULE)"
command -v softhsm2-util >/dev/null || die "softhsm2-util not found (apt-get install softhsm2)"
command -v pkcs11-tool >/dev/null || die "pkcs11-tool not found (apt-get install opensc)"

mkdir -p "$dir/tokens"
chmod 700 "$dir" "$dir/tokens"
dir=$(cd "$dir" && pwd -P)
conf=$dir/softhsm2.conf
want_conf="# written by kmsd scripts/softhsm-init.sh
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false"
if [[ -e $conf ]]; then
	grep -qxF "directories.tokendir = $dir/tokens" "$conf" ||
		die "$conf exists but does not use $dir/tokens; remove it or choose another DIR"
else
	(umask 077 && printf '%s\n' "$want_conf" >"$conf.tmp")
	mv "$conf.tmp" "$conf"
fi
export SOFTHSM2_CONF=$conf

p11() {
	pkcs11-tool --module "$module" "$@"
}

# token_exists: is a token labelled $token present? (label lines look like
# "  token label        : kmsd-node1")
token_exists() {
	p11 --list-token-slots 2>/dev/null |
		sed -n 's/^[[:space:]]*token label[[:space:]]*:[[:space:]]*//p' |
		sed 's/[[:space:]]*$//' | grep -qxF -- "$token"
}

if ! token_exists; then
	so_pin=${KMSD_HSM_SO_PIN:-}
	if [[ -z $so_pin ]]; then
		so_pin=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
		echo "softhsm-init: generated SO PIN for token \"$token\": $so_pin (keep it; it is not stored)" >&2
	fi
	softhsm2-util --init-token --free --label "$token" --so-pin "$so_pin" --pin "$KMSD_HSM_PIN" >/dev/null ||
		die "could not create token \"$token\""
	echo "softhsm-init: created token \"$token\" in $dir/tokens" >&2
fi

# Logging in also checks the PIN of a token that existed before.
# (--list-objects ignores --label, so the labels are compared here.)
objects=$(p11 --token-label "$token" --login --pin env:KMSD_HSM_PIN \
	--list-objects --type secrkey 2>/dev/null) ||
	die "cannot log in to token \"$token\" (wrong KMSD_HSM_PIN?)"
if sed -n 's/^[[:space:]]*label:[[:space:]]*//p' <<<"$objects" | grep -qxF -- "$key"; then
	echo "softhsm-init: key \"$key\" exists on token \"$token\"; nothing to do" >&2
else
	p11 --token-label "$token" --login --pin env:KMSD_HSM_PIN \
		--keygen --key-type AES:32 --label "$key" \
		--sensitive --private --usage-decrypt >/dev/null 2>&1 ||
		die "could not create AES-256 key \"$key\" on token \"$token\""
	echo "softhsm-init: created AES-256 key \"$key\" on token \"$token\"" >&2
fi

printf 'export SOFTHSM2_CONF=%q\n' "$conf"
