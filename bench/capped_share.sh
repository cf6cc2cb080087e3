#!/usr/bin/env bash
# A capped sharer's delivery (issue 11, item 6): `shoal share --up-limit CAP` serving one
# downloader, then 8 at once, for caps from 1 MiB/s up to uncapped, on 127.0.0.1.
#
# Usage: [SHOAL=target/release/shoal] bash bench/capped_share.sh [CAPS="1MiB 4MiB 16MiB 64MiB 200MiB 0"] [SECONDS=8]
#
# One downloader: the file is CAP × SECONDS bytes (16 MiB to 1 GiB; 1 GiB uncapped) and the
# rate is its size over the whole `get` (start to exit). Eight downloaders (`get` run
# together; they also serve each other, as in a real swarm): the sharer's own upload rate,
# from its `--json` status lines (one per second), averaged over the seconds in which all
# eight were still downloading. Both are reported as a fraction of the cap: the goal is
# ≥ 0.9. Needs a release build and python3. Only 127.0.0.1 is used.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
SHOAL=${SHOAL:-$HERE/target/release/shoal}
CAPS=${1:-"1MiB 4MiB 16MiB 64MiB 200MiB 0"}
SECS=${2:-8}
ROOT=${ROOT:-${TMPDIR:-/tmp}/shoal-bench}; mkdir -p "$ROOT/data"
WORK=$(mktemp -d "$ROOT/cap.XXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

bytes_of() { python3 -c 'import sys; u={"KiB":1<<10,"MiB":1<<20,"GiB":1<<30}; s=sys.argv[1]
for k,v in u.items():
    if s.endswith(k): print(int(float(s[:-3])*v)); break
else: print(int(s))' "$1"; }

"$SHOAL" --version
printf '%-8s %-9s %-22s %-22s\n' cap size "1 downloader" "8 downloaders (sharer)"
for cap in $CAPS; do
  rate=$(bytes_of "$cap")
  if [ "$rate" = 0 ]; then size=$((1 << 30)); else
    size=$(( rate * SECS ))
    if [ $size -lt $((16 << 20)) ]; then size=$((16 << 20)); fi
    if [ $size -gt $((1 << 30)) ]; then size=$((1 << 30)); fi
  fi
  data="$ROOT/data/cap-$size.bin"
  [ -f "$data" ] || head -c "$size" /dev/urandom >"$data"
  run="$WORK/$cap"; mkdir -p "$run"
  # The sharer's JSON lines, each stamped with the time it arrived.
  SHOAL_DATA_DIR="$run/sharer" "$SHOAL" share "$data" --listen /ip4/127.0.0.1/tcp/0 --no-dht \
    --up-limit "$cap" --json 2>"$run/share.err" \
    | python3 -u -c 'import sys,time,json
for l in sys.stdin:
    v=json.loads(l); v["t"]=time.time(); print(json.dumps(v), flush=True)' >"$run/share.jsonl" &
  sharer=$!; PIDS+=("$sharer")
  until [ -s "$run/share.jsonl" ]; do sleep 0.1; done
  link=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["link"])' "$run/share.jsonl")

  # One downloader.
  start=$(date +%s.%N)
  "$SHOAL" get "$link" --no-dht -o "$run/one.bin" >/dev/null 2>"$run/one.err"
  end=$(date +%s.%N)
  cmp -s "$data" "$run/one.bin" || { echo "one: OUTPUT DIFFERS"; exit 1; }
  rm -f "$run/one.bin"
  one=$(python3 -c 'import sys; s,e,n,r=map(float,sys.argv[1:]); mb=n/(e-s)/1e6; print(f"{mb:.1f} MB/s" + (f" = {n/(e-s)/r:.2f}x" if r else ""))' "$start" "$end" "$size" "$rate")

  # Eight downloaders at once.
  gets=()
  for i in $(seq 1 8); do
    mkdir -p "$run/g$i" # one directory each: a directory holds one download of a blob
    "$SHOAL" get "$link" --no-dht --json -o "$run/g$i/f.bin" >"$run/g$i.json" 2>"$run/g$i.err" &
    gets+=($!)
  done
  t0=$(date +%s.%N)
  for g in "${gets[@]}"; do wait "$g"; done
  for i in $(seq 1 8); do cmp -s "$data" "$run/g$i/f.bin" || { echo "g$i: OUTPUT DIFFERS"; exit 1; }; rm -rf "$run/g$i"; done
  eight=$(python3 - "$run" "$t0" "$rate" <<'PY'
import json, sys, glob
run, t0, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
first_done = min(json.load(open(f))["finished_unix"] for f in glob.glob(run + "/g*.json"))
# Each status line covers the second before it: keep the whole seconds in which all eight
# were downloading (the first second is start-up: bootstrapping, first requests).
lines = [json.loads(l) for l in open(run + "/share.jsonl") if "upload_bytes_per_sec" in l]
busy = [l["upload_bytes_per_sec"] for l in lines if t0 + 2 <= l["t"] <= first_done]
if not busy:
    print("too short to measure")
else:
    mean = sum(busy) / len(busy)
    print(f"{mean/1e6:.1f} MB/s" + (f" = {mean/rate:.2f}x" if rate else "") + f" over {len(busy)} s")
PY
)
  pkill -P "$$" -f "shoal share $data" 2>/dev/null || true; kill "$sharer" 2>/dev/null || true
  wait "$sharer" 2>/dev/null || true
  printf '%-8s %-9s %-22s %-22s\n' "$cap" "$((size >> 20))MiB" "$one" "$eight"
done
