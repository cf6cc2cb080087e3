# Shoal adapter for ../shared/bench/flash_crowd.sh (sourced by it, not run on its own):
#   cargo build --release -p shoal-cli
#   IMPL=shoal IMPL_FILE=bench/flash_crowd_shoal.sh bash ../shared/bench/flash_crowd.sh 3
#
# A `shoal tracker`, one `shoal share` as the seeder (upload capped at $SEED_UP_BPS), and N
# `shoal get --seed` leechers (upload capped at $PEER_UP_BPS, no download cap) that find each
# other through the tracker and serve each other the blocks they have. Everything listens on
# 127.0.0.1 only. SHOAL=path/to/shoal overrides the binary.
#
# SEED=node: the seed is a `shoal seed-node` instead (upload capped at $SEED_UP_BPS, policy
# POLICY=fast|frugal, default fast). A publisher shares the file, pushes its ciphertext to the
# seed node and leaves before the clock starts; the leechers' link names only the tracker,
# which lists the seed node as a seed node. Its upload comes from its /stats (egress per blob).
SEED=${SEED:-share}
POLICY=${POLICY:-fast}
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
  mkdir -p "$WORK/tracker" "$WORK/seed/data" "$WORK/pub"
  local allow=()
  if [ "$SEED" = node ]; then
    allow=(--allow-seed-node "$("$SHOAL" --data-dir "$WORK/seed/data" id --role seed-node)")
  fi
  spawn "$SHOAL" --data-dir "$WORK/tracker" tracker --listen "/ip4/127.0.0.1/tcp/$TRACKER_PORT" \
    --http "127.0.0.1:$((TRACKER_PORT + 5))" "${allow[@]}" >"$WORK/tracker/out.txt" 2>"$WORK/tracker/err.txt"
  until [ -s "$WORK/tracker/out.txt" ]; do sleep 0.05; done
  TRACKER_ADDR=$(head -1 "$WORK/tracker/out.txt")
}

# SEED=node: seed node up, then the publisher shares (briefly, to seal the file and get the
# link), pushes, and is gone before the leechers start.
seed_node_start() {
  local pub_id link
  pub_id=$("$SHOAL" --data-dir "$WORK/pub" id)
  spawn_seed "$SHOAL" --data-dir "$WORK/seed/data" seed-node --store "$WORK/seed/store" --allow "$pub_id" \
    --policy "$POLICY" --up-limit "$SEED_UP_BPS" --tracker "$TRACKER_ADDR" \
    --listen "/ip4/127.0.0.1/tcp/$SEED_PORT" --http "127.0.0.1:$((TRACKER_PORT + 6))" \
    >"$WORK/seed/node.txt" 2>"$WORK/seed/err.txt"
  "$SHOAL" --data-dir "$WORK/pub" share "$WORK/seed/$NAME" --no-dht --listen /ip4/127.0.0.1/tcp/0 \
    --json >"$WORK/pub/out.txt" 2>"$WORK/pub/err.txt" &
  local share_pid=$!
  until [ -s "$WORK/pub/out.txt" ]; do sleep 0.05; done
  kill "$share_pid"; wait "$share_pid" 2>/dev/null || true
  until [ -s "$WORK/seed/node.txt" ]; do sleep 0.05; done
  link=$(shoal_json_field "$WORK/pub/out.txt" link)
  "$SHOAL" --data-dir "$WORK/pub" push "$link" --to "$(head -1 "$WORK/seed/node.txt")" \
    2>"$WORK/pub/push.txt"
  # The leechers' link: no peer hint (the publisher is gone), the tracker instead.
  python3 - "$link" "$TRACKER_ADDR" >"$WORK/seed/out.txt" <<'PY'
import json, sys, urllib.parse
link, tracker = sys.argv[1], sys.argv[2]
head, key = link.split("#", 1)
base, _, query = head.partition("?")
params = [(k, v) for k, v in urllib.parse.parse_qsl(query) if k != "peer"] + [("tr", tracker)]
print(json.dumps({"link": base + "?" + urllib.parse.urlencode(params, safe="/:") + "#" + key}))
PY
}

# The seed node's egress; its whole /stats (frugal decisions included) is appended to
# $RESULTS/flash_crowd_shoal_seed_node.jsonl.
seed_node_uploaded() {
  curl -s "http://127.0.0.1:$((TRACKER_PORT + 6))/stats" >"$WORK/seed/stats.json" || true
  tr -d '\n' <"$WORK/seed/stats.json" >>"$RESULTS/flash_crowd_shoal_seed_node.jsonl" &&
    echo >>"$RESULTS/flash_crowd_shoal_seed_node.jsonl"
  python3 -c 'import json,sys; print(sum(b["egress_bytes"] for b in json.load(sys.stdin)["blobs"]))' \
    <"$WORK/seed/stats.json" 2>/dev/null || echo ""
}

impl_start_seeder() {
  if [ "$SEED" = node ]; then seed_node_start; return; fi
  spawn_seed "$SHOAL" --data-dir "$WORK/seed/data" share "$WORK/seed/$NAME" \
    --listen "/ip4/127.0.0.1/tcp/$SEED_PORT" --up-limit "$SEED_UP_BPS" --tracker "$TRACKER_ADDR" \
    --json >"$WORK/seed/out.txt" 2>"$WORK/seed/err.txt"
}

# Ready once the link is out and the tracker lists the seeder.
impl_wait_seeder_ready() {
  [ -s "$WORK/seed/out.txt" ] || return 1
  if [ "$SEED" = node ]; then
    curl -s "http://127.0.0.1:$((TRACKER_PORT + 5))/stats" | grep -q '"seed_nodes":[1-9]'
  else
    curl -s "http://127.0.0.1:$((TRACKER_PORT + 5))/stats" | grep -q '"seeders":[1-9]'
  fi
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

impl_seeder_uploaded() {
  if [ "$SEED" = node ]; then seed_node_uploaded; return; fi
  sleep 1.1; shoal_json_field "$WORK/seed/out.txt" uploaded_bytes
}
impl_leecher_uploaded() { shoal_json_field "$WORK/leech$1/out.txt" uploaded_bytes; }
