# Shoal adapter for ../shared/bench/flash_crowd.sh (sourced by it, not run on its own):
#   cargo build --release -p shoal-cli
#   IMPL=shoal IMPL_FILE=bench/flash_crowd_shoal.sh bash ../shared/bench/flash_crowd.sh 3
#
# A `shoal tracker`, one `shoal share` as the seeder (upload capped at $SEED_UP_BPS), and N
# `shoal get --seed` leechers (upload capped at $PEER_UP_BPS, no download cap) that find each
# other through the tracker and serve each other the blocks they have. Everything listens on
# 127.0.0.1 only. SHOAL=path/to/shoal overrides the binary.
#
# Completion time: `get --json` prints its result line (with "finished_unix") the moment the
# file is complete, verified and renamed into place. Uploads: the seeder's and leechers'
# own counters (`uploaded_bytes`, JSON status lines every second).

SHOAL=${SHOAL:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/shoal}

shoal_json_field() { # FILE FIELD: the field of the last JSON line that has it
  python3 - "$1" "$2" <<'PY' 2>/dev/null || echo ""
import json, sys
val = ""
for line in open(sys.argv[1]):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    if sys.argv[2] in v:
        val = v[sys.argv[2]]
print(val)
PY
}

impl_version() { echo "$("$SHOAL" --version) (release build)"; }

impl_setup() {
  mkdir -p "$WORK/tracker"
  spawn "$SHOAL" --data-dir "$WORK/tracker" tracker --listen "/ip4/127.0.0.1/tcp/$TRACKER_PORT" \
    --http "127.0.0.1:$((TRACKER_PORT + 5))" >"$WORK/tracker/out.txt" 2>"$WORK/tracker/err.txt"
  until [ -s "$WORK/tracker/out.txt" ]; do sleep 0.05; done
  TRACKER_ADDR=$(head -1 "$WORK/tracker/out.txt")
}

impl_start_seeder() {
  spawn_seed "$SHOAL" --data-dir "$WORK/seed/data" share "$WORK/seed/$NAME" \
    --listen "/ip4/127.0.0.1/tcp/$SEED_PORT" --up-limit "$SEED_UP_BPS" --tracker "$TRACKER_ADDR" \
    --json >"$WORK/seed/out.txt" 2>"$WORK/seed/err.txt"
}

# Ready once the link is out and the tracker lists the seeder.
impl_wait_seeder_ready() {
  [ -s "$WORK/seed/out.txt" ] || return 1
  curl -s "http://127.0.0.1:$((TRACKER_PORT + 5))/stats" | grep -q '"seeders":[1-9]'
}

impl_start_leecher() {
  local link
  link=$(shoal_json_field "$WORK/seed/out.txt" link)
  mkdir -p "$WORK/leech$1"
  spawn "$SHOAL" --data-dir "$WORK/leech$1/data" get "$link" --seed -o "$WORK/leech$1/$NAME" \
    --listen "/ip4/127.0.0.1/tcp/$(leech_port "$1")" --up-limit "$PEER_UP_BPS" \
    --json >"$WORK/leech$1/out.txt" 2>"$WORK/leech$1/err.txt"
}

impl_leecher_done() {
  local t
  t=$(shoal_json_field "$WORK/leech$1/out.txt" finished_unix)
  [ -n "$t" ] && echo "$t"
}
impl_leecher_file() { echo "$WORK/leech$1/$NAME"; }

impl_seeder_uploaded() { sleep 1.1; shoal_json_field "$WORK/seed/out.txt" uploaded_bytes; }
impl_leecher_uploaded() { shoal_json_field "$WORK/leech$1/out.txt" uploaded_bytes; }
