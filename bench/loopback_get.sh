#!/usr/bin/env bash
# Loopback `shoal get` of a random file, whole process (start to exit, incl. dialing,
# verification, decryption and the final rename), interleaved with iperf3 single-stream TCP
# runs in the same session so the ratio holds on a noisy machine. Peak RSS via /usr/bin/time.
#
# Usage: [GET_ARGS=--sequential] [OUT_DIR=/dev/shm] [DROP_CACHES=0] bash bench/loopback_get.sh [MIB=1024] [RUNS=5] [TRANSPORT=tcp|quic]
# Before each run the page cache is dropped (when run as root), so the sharer reads its file
# from disk; DROP_CACHES=0 keeps it cached, as the reference scripts in ../shared/bench do.
# OUT_DIR puts the downloaded file elsewhere (default: next to the work files, on disk); a
# tmpfs there takes the disk's flush out of the figure.
# Needs: a release build (cargo build --release -p shoal-cli), iperf3, GNU time (apt-get
# install iperf3 time). Only 127.0.0.1 is used.
set -euo pipefail
for tool in iperf3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install iperf3 time" >&2; exit 2; }
done
MIB=${1:-1024}
RUNS=${2:-5}
TRANSPORT=${3:-tcp}
HERE=$(cd "$(dirname "$0")/.." && pwd)
SHOAL=${SHOAL:-$HERE/target/release/shoal}
ROOT=${ROOT:-${TMPDIR:-/tmp}/shoal-bench}; mkdir -p "$ROOT/data"
WORK=$(mktemp -d "$ROOT/get.XXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

DATA="$ROOT/data/rand${MIB}m.bin"
[ -f "$DATA" ] || head -c "$((MIB * 1048576))" /dev/urandom >"$DATA"
BYTES=$(stat -c %s "$DATA")
case $TRANSPORT in
  tcp) LISTEN=/ip4/127.0.0.1/tcp/0 ;;
  quic) LISTEN=/ip4/127.0.0.1/udp/0/quic-v1 ;;
  *) echo "TRANSPORT must be tcp or quic"; exit 2 ;;
esac

"$SHOAL" --version
SHOAL_DATA_DIR="$WORK/sharer" "$SHOAL" share "$DATA" --listen "$LISTEN" >"$WORK/link" 2>"$WORK/share.log" &
PIDS+=($!)
until [ -s "$WORK/link" ]; do sleep 0.1; done
LINK=$(head -1 "$WORK/link")

iperf3 -s -B 127.0.0.1 -p 15299 >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5

shoal_vals=(); iperf_vals=(); rss_vals=()
for i in $(seq 1 "$RUNS"); do
  out="${OUT_DIR:-$WORK}/shoal-bench-out$i"; mkdir -p "$out"
  if [ "${DROP_CACHES:-1}" != 0 ]; then sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true; fi
  /usr/bin/time -f '%e %M %U %S' -o "$WORK/time$i" "$SHOAL" get ${GET_ARGS:-} "$LINK" -o "$out/f" >/dev/null 2>"$WORK/get$i.log"
  read -r secs rss_kib user sys <"$WORK/time$i"
  cmp -s "$DATA" "$out/f" || { echo "run $i: OUTPUT DIFFERS"; exit 1; }
  mbs=$(awk -v b="$BYTES" -v s="$secs" 'BEGIN{printf "%.0f", b/s/1e6}')
  rm -rf "$out"
  bps=$(iperf3 -c 127.0.0.1 -p 15299 -t 5 -P 1 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
  ip=$(awk -v b="$bps" 'BEGIN{printf "%.0f", b/8/1e6}')
  echo "run $i: shoal get ${MIB} MiB over $TRANSPORT: ${secs} s = ${mbs} MB/s, peak RSS $((rss_kib / 1024)) MiB, CPU ${user}u+${sys}s | iperf3: ${ip} MB/s"
  shoal_vals+=("$mbs"); iperf_vals+=("$ip"); rss_vals+=("$rss_kib")
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
S=$(med "${shoal_vals[@]}"); I=$(med "${iperf_vals[@]}"); R=$(med "${rss_vals[@]}")
awk -v s="$S" -v i="$I" -v r="$R" -v t="$TRANSPORT" 'BEGIN{printf "MEDIAN: shoal get %s MB/s over %s, iperf3 %s MB/s, ratio %.3f, peak RSS %.1f MiB\n", s, t, i, s/i, r/1024}'
