#!/usr/bin/env bash
# NAT lab: Shoal between home peers behind NAT routers, on one machine (root; network namespaces).
#
#   sudo TRIALS=40 bench/nat_lab.sh                    # everything: pair, symmetric, flash (12 min here when
#                                                      # the punches work; a failing trial waits out PATIENCE)
#   sudo QUICK=1 bench/nat_lab.sh                      # CI-sized: 3 trials, 8 MiB flash crowd, ~3 min
#   sudo SCENARIOS=flash RTT_MS=80 LOSS=0.01 KEEP=1 bench/nat_lab.sh
#
# What it builds (namespaces named shl<pid>…, so parallel runs do not collide; private addresses only):
#
#                      ┌── pub      10.100.0.2   tracker (tcp+quic 7000), seed node (tcp+quic 7010)
#                      ├── ppK      10.101.K.2   public peers (no NAT), K = 1..8
#      inet (core) ────┼── rtrN wan 10.200.N.2 ── lan 192.168.N.1 ── homeN 192.168.N.2, N = 1..8
#     10.x.y.1 per link│   rtr1..rtr6: home router (MASQUERADE, port-preserving)
#                      └── rtr7..rtr8: symmetric NAT (MASQUERADE --random-fully)
#
#   The core router `inet` forwards between sites; its FORWARD chain drops at random (iptables statistic,
#   LOSS) and queues everything else to NFQUEUE 0, where `shoal-netem` holds each packet RTT_MS/2 (this
#   kernel has no netem). Every path between two sites crosses the core once each way, so every such path
#   has RTT_MS of round trip and LOSS per direction. NAT routers forward LAN->WAN and, from WAN to LAN, only
#   conntrack ESTABLISHED/RELATED packets (like a home router: nothing gets in unasked). All veths send
#   MTU-sized packets (gso_max_segs 1), so the loss hits packets, not 64 KiB GSO bursts.
#
# Scenarios (SCENARIOS, default "pair symmetric flash"):
#   pair       home1 (A) shares a PAIR_MIB file naming the lab's tracker; home2 (B) runs `shoal get --json`.
#              Both behind home-router NAT. TRIALS times over TCP only, TRIALS times over QUIC only, fresh
#              identities each trial, TRIAL_TIMEOUT s each (a hang is a failure). A trial is direct when B's
#              result lists A's peer id in "direct_from"; median_direct_s is the median "secs" of A's
#              successful "punches". A does not push to the seed node (PAIR_PUSH=1 to make it), so a
#              transfer completes only through a direct connection or a relay.
#   symmetric  the same between home7 and home8, both behind symmetric NAT, TCP and QUIC listened on,
#              max(3, TRIALS/4) trials. A pushes to the seed node first (SYM_PUSH=0 not to), so a transfer
#              can complete through the relay or the seed node; reports the fraction that completes.
#   flash      a flash crowd: the seed node (SEED_UP, fast policy) and 8 home peers (6 home-router NAT, 2
#              symmetric NAT) that `get --seed` a FLASH_MIB random file together with uploads capped at
#              PEER_UP, clock from start to the last peer's completion. Then the same with the 8 public peers
#              (no NAT, same RTT and loss). Reports each over Kumar-Ross T_min = max(F/u_s, N*F/(u_s+N*u))
#              (downloads uncapped) and the seed node's egress with NAT over without.
#   libtorrent the public half of `flash` with libtorrent-rasterbar (python3-libtorrent, its defaults: uTP
#              on) instead of Shoal: a seeder in pub at SEED_UP, the 8 public peers at PEER_UP, same file,
#              RTT and loss. Not in the default set; SCENARIOS="flash libtorrent" runs both side by side.
#
# Env: RTT_MS=40 LOSS=0.005 TRIALS=40 SCENARIOS="pair symmetric flash" PAIR_MIB=4 FLASH_MIB=64
#      SEED_UP=4MiB PEER_UP=1MiB TRIAL_TIMEOUT=60 PATIENCE=30s (get --patience in pair/symmetric)
#      FLASH_TIMEOUT=600 PAIR_PUSH=0 SYM_PUSH=1 QUICK=0 (1: TRIALS=3, FLASH_MIB=8, PATIENCE=10s,
#      TRIAL_TIMEOUT=30, FLASH_TIMEOUT=120; explicit settings win)
#      SHOAL=target/release/shoal NETEM=target/release/shoal-netem (built with cargo when missing)
#      LT_PY=/usr/bin/python3 (a python that imports libtorrent, for the libtorrent scenario)
#      WORK=dir for logs (default: a new temporary dir, removed at exit unless KEEP=1 or a run failed;
#      a WORK you give is never removed)
# Needs: root, ip (iproute2), iptables (nf_tables or legacy) with the statistic, conntrack and NFQUEUE
#      matches/targets, python3, sha256sum.
# Output: progress on stderr; per-scenario summaries and, as the LAST line of stdout, one JSON object:
#      direct_tcp, direct_quic, median_direct_s, symmetric_completed, flash_crowd_over_tmin,
#      flash_crowd_no_nat_over_tmin, seed_egress_vs_no_nat, rtt_ms_measured, loss, trials,
#      flash_libtorrent_over_tmin (with the libtorrent scenario), and more.
#      Per-trial records: $WORK/trials.jsonl; flash results: $WORK/flash_*/result.json.
# Everything started here is stopped by pid and every namespace is deleted on exit (also on errors and
# Ctrl-C). Every wait is bounded.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHOAL=${SHOAL:-$REPO/target/release/shoal}
NETEM=${NETEM:-$REPO/target/release/shoal-netem}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  TRIALS=${TRIALS:-3} FLASH_MIB=${FLASH_MIB:-8} PATIENCE=${PATIENCE:-10s}
  TRIAL_TIMEOUT=${TRIAL_TIMEOUT:-30} FLASH_TIMEOUT=${FLASH_TIMEOUT:-120}
fi
RTT_MS=${RTT_MS:-40}
LOSS=${LOSS:-0.005}
TRIALS=${TRIALS:-40}
SCENARIOS=${SCENARIOS:-pair symmetric flash}
SCENARIOS=${SCENARIOS//,/ }
PAIR_MIB=${PAIR_MIB:-4}
FLASH_MIB=${FLASH_MIB:-64}
SEED_UP=${SEED_UP:-4MiB}
PEER_UP=${PEER_UP:-1MiB}
TRIAL_TIMEOUT=${TRIAL_TIMEOUT:-60}
PATIENCE=${PATIENCE:-30s}
FLASH_TIMEOUT=${FLASH_TIMEOUT:-600}
PAIR_PUSH=${PAIR_PUSH:-0}
SYM_PUSH=${SYM_PUSH:-1}
KEEP=${KEEP:-0}
HOMES=8           # home1..6: home-router NAT, home7..8: symmetric NAT
SYM_FIRST=7
PUBLIC_PEERS=8
FLASH_N=8

P=shl$$           # namespace prefix
PUB_IP=10.100.0.2
TRACKER_PORT=7000
SEED_PORT=7010
TRACKER_HTTP=127.0.0.1:7001 # inside the pub namespace
SEED_HTTP=127.0.0.1:7002
PROBE_PORT=9000

log() { echo "[nat_lab $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; FAILED=1; exit 1; }

# ------------------------------------------------------------------ processes and clean-up
PIDS=()
NAMESPACES=()
FAILED=0
MADE_WORK=0
NETEM_PID=""

# Stops one process we started: SIGINT (a node leaves its trackers), then TERM, then KILL; bounded.
stop_pid() {
  local pid=$1 i
  kill -INT "$pid" 2>/dev/null || return 0
  for i in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}
forget() {
  local p keep=()
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

cleanup() {
  local rc=$? p ns i
  set +e
  trap '' INT TERM
  # Our children only (a pid of ours that exited may have been reused by now).
  for p in "${PIDS[@]}"; do
    [ "$(awk '/^PPid:/{print $2}' "/proc/$p/status" 2>/dev/null)" = "$$" ] && kill -TERM "$p" 2>/dev/null
  done
  for i in $(seq 1 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do
    [ "$(awk '/^PPid:/{print $2}' "/proc/$p/status" 2>/dev/null)" = "$$" ] && kill -KILL "$p" 2>/dev/null
  done
  # Anything still inside our namespaces was started by this run (ip netns exec children).
  for ns in "${NAMESPACES[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  done
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
  [ "$rc" = 0 ] || FAILED=1
  if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
    if [ "$MADE_WORK" = 1 ] && [ "$KEEP" != 1 ] && [ "$FAILED" = 0 ]; then
      rm -rf "$WORK"
    else
      log "logs kept in $WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# in NS CMD…: run a command in one of our namespaces (name without prefix)
in_ns() { local ns=$1; shift; ip netns exec "$P$ns" "$@"; }
# spawn NS OUT ERR CMD…: start a process in a namespace, in the background; its pid in LAST_PID
spawn() {
  local ns=$1 out=$2 err=$3; shift 3
  ip netns exec "$P$ns" "$@" >"$out" 2>"$err" </dev/null &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
# wait_for SECS WHAT CMD…: poll CMD every 0.05 s for at most SECS; fail with WHAT
wait_for() {
  local secs=$1 what=$2 i; shift 2
  for i in $(seq 1 $((secs * 20))); do
    "$@" && return 0
    sleep 0.05
  done
  die "timed out after $secs s waiting for: $what"
}
# try_wait_for SECS CMD…: like wait_for, but returns 1 instead of failing the run
try_wait_for() {
  local secs=$1 i; shift
  for i in $(seq 1 $((secs * 20))); do "$@" && return 0; sleep 0.05; done
  return 1
}
now() { date +%s.%N; }
lab() { "$PY" "$WORK/lab.py" "$@"; }

# ------------------------------------------------------------------ checks and inputs
[ "$(id -u)" = 0 ] || { echo "nat_lab.sh builds network namespaces: run it as root (sudo)" >&2; exit 2; }
for t in ip iptables python3 sha256sum; do
  command -v "$t" >/dev/null || { echo "nat_lab.sh needs $t (apt-get install iproute2 iptables python3 coreutils)" >&2; exit 2; }
done
case "$RTT_MS" in '' | *[!0-9]*) echo "RTT_MS must be a whole number of ms" >&2; exit 2 ;; esac
HALF_MS=$((RTT_MS / 2))
[ $((HALF_MS * 2)) = "$RTT_MS" ] || log "RTT_MS=$RTT_MS is odd: each direction gets $HALF_MS ms (RTT $((HALF_MS * 2)) ms)"
for s in $SCENARIOS; do
  case "$s" in pair | symmetric | flash | libtorrent) ;; *) echo "unknown scenario '$s' (pair, symmetric, flash, libtorrent)" >&2; exit 2 ;; esac
done
if [ -z "${WORK:-}" ]; then WORK=$(mktemp -d "${TMPDIR:-/tmp}/shoal-nat-lab.XXXXXX"); MADE_WORK=1; fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
log "work dir (logs): $WORK"

if [ ! -x "$SHOAL" ]; then
  log "building $SHOAL (cargo build --release -p shoal-cli)"
  (cd "$REPO" && cargo build --release -p shoal-cli) >&2
fi
if [ ! -x "$NETEM" ]; then
  log "building $NETEM (cargo build --release -p shoal-sim)"
  (cd "$REPO" && cargo build --release -p shoal-sim) >&2
fi
[ -x "$SHOAL" ] || die "no shoal binary at $SHOAL"
[ -x "$NETEM" ] || die "no shoal-netem binary at $NETEM"
# Run copies, so a rebuild during a long run does not mix versions.
mkdir -p "$WORK/bin"
cp "$SHOAL" "$WORK/bin/shoal" && SHOAL=$WORK/bin/shoal
cp "$NETEM" "$WORK/bin/shoal-netem" && NETEM=$WORK/bin/shoal-netem
# The interpreter itself, not a version manager's shim (each shim start costs ~50 ms of CPU).
PY=$(python3 -c 'import sys; print(sys.executable)')

cat >"$WORK/lab.py" <<'PY'
"""Helpers for nat_lab.sh: probes, JSON fields, stats, per-trial records, the summary."""
import json, os, socket, statistics, sys, time, urllib.parse, urllib.request


def json_lines(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return out


def last_with(path, field):
    val = None
    for v in json_lines(path):
        if field in v:
            val = v[field]
    return val


def http_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def find_key(v, key):
    if isinstance(v, dict):
        if key in v:
            return v[key]
        for x in v.values():
            r = find_key(x, key)
            if r is not None:
                return r
    return None


def size(text):
    t = text.strip()
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1000, "MB": 10**6, "GB": 10**9, "B": 1}
    for u, m in units.items():
        if t.endswith(u):
            return int(float(t[: -len(u)]) * m)
    return int(t)


def median(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def cmd_listen(addr, port, secs):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(256)  # the kernel completes handshakes; nothing needs accepting
    time.sleep(float(secs))


def cmd_rtt(addr, port, n):
    samples, failures = [], 0
    for _ in range(int(n) + 1):  # the first one warms up (neighbour resolution, conntrack)
        t = time.monotonic()
        try:
            c = socket.create_connection((addr, int(port)), timeout=3)
            ms = (time.monotonic() - t) * 1000
            c.close()
            samples.append(ms)
        except OSError:
            failures += 1
        time.sleep(0.02)
    samples = samples[1:]
    print(json.dumps({"median_ms": round(median(samples), 2) if samples else None,
                      "min_ms": round(min(samples), 2) if samples else None,
                      "samples_ms": [round(x, 2) for x in samples], "failures": failures}))


def cmd_udpecho(addr, p1, p2, secs):
    # Answers every datagram with the address it came from (what a NAT mapped it to).
    import select
    socks = []
    for p in (p1, p2):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((addr, int(p)))
        socks.append(u)
    end = time.monotonic() + float(secs)
    while time.monotonic() < end:
        r, _, _ = select.select(socks, [], [], 0.2)
        for u in r:
            data, peer = u.recvfrom(100)
            u.sendto(("%s:%d" % peer).encode(), peer)


def cmd_natcheck(addr, p1, p2):
    # One UDP socket to two ports of one host: a NAT that keeps the mapping per socket
    # (endpoint-independent) shows the same outside port to both.
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 0))
    u.settimeout(0.5)
    seen = []
    for p in (p1, p2):
        for _ in range(6):
            u.sendto(b"?", (addr, int(p)))
            try:
                seen.append(u.recvfrom(100)[0].decode())
                break
            except socket.timeout:
                pass
    mapping = None
    if len(seen) == 2:
        mapping = "endpoint-independent" if seen[0] == seen[1] else "endpoint-dependent"
    print(json.dumps({"local_port": u.getsockname()[1], "seen_as": seen, "mapping": mapping}))


def cmd_blocked(addr, port):
    # An unsolicited TCP connection from outside: a home router drops it (times out).
    try:
        socket.create_connection((addr, int(port)), timeout=1.5).close()
        print("open")
    except socket.timeout:
        print("dropped")
    except OSError as e:
        print("refused" if e.errno == 111 else "error %s" % e.errno)


def cmd_field(path, field):
    v = last_with(path, field)
    if v is None:
        print("")
    elif isinstance(v, (dict, list)):
        print(json.dumps(v))
    else:
        print(v)


def cmd_gauge(url, key):
    try:
        print(int(find_key(http_json(url), key) or 0))
    except Exception:
        print(-1)


def cmd_egress(url, blob):
    try:
        blobs = http_json(url).get("blobs", [])
        print(sum(b.get("egress_bytes", 0) for b in blobs if b.get("id") == blob))
    except Exception:
        print("")


def cmd_stored(url, blob):
    try:
        ok = any(b.get("id") == blob for b in http_json(url).get("blobs", []))
    except Exception:
        ok = False
    sys.exit(0 if ok else 1)


def cmd_relink(link, tracker):
    # No peer hint (the publisher is gone): the tracker instead (as bench/flash_crowd_shoal.sh).
    head, key = link.split("#", 1)
    base, _, query = head.partition("?")
    params = [(k, v) for k, v in urllib.parse.parse_qsl(query) if k not in ("peer", "tr")] + [("tr", tracker)]
    print(base + "?" + urllib.parse.urlencode(params, safe="/:") + "#" + key)


def cmd_trial(kind, i, out, a_id, rc, hang, sha_ok, elapsed, egress, file_len):
    res = {}
    for v in json_lines(out):
        if "path" in v or "error" in v:
            res = v
    direct_from = res.get("direct_from") or []
    punches = [p for p in (res.get("punches") or []) if p.get("peer") == a_id]
    ok_secs = [p.get("secs") for p in punches if p.get("ok") and p.get("secs") is not None]
    completed = rc == "0" and sha_ok == "1" and "path" in res
    rec = {
        "kind": kind, "trial": int(i), "a_id": a_id, "completed": completed, "exit_code": int(rc), "hang": hang == "1",
        "elapsed_s": round(float(elapsed), 2), "get_seconds": res.get("seconds"),
        "direct": a_id in direct_from, "punch_attempts": len(punches),
        "punch_ok_secs": min(ok_secs) if ok_secs else None,
        "bytes_from": {"direct_peers": direct_from, "relayed_bytes": res.get("relayed_bytes"),
                       "sources": res.get("sources"),
                       "seed_node_egress_bytes": int(egress) if egress not in ("", None) else None,
                       "file_len": int(file_len)},
        "fields_present": sorted(k for k in ("direct_from", "punches", "relayed_bytes", "sources") if k in res),
        "reachability": res.get("reachability"),
        "error": res.get("error"), "message": res.get("message"),
    }
    print(json.dumps(rec))


def cmd_flash(label, d, n, file_len, seed_up, peer_up, t0, egress, sha_ok, timeout, seed_id):
    n, F, us, u = int(n), int(file_len), size(seed_up), size(peer_up)
    t0 = float(t0)
    tmin = max(F / us, n * F / (us + n * u)) if us > 0 and u > 0 else None
    times, uploaded = [], []
    blocks = {"seed_node": 0, "peers_direct": 0, "relayed": 0}
    for k in range(1, n + 1):
        for src in last_with(os.path.join(d, "peer%d" % k, "out.txt"), "sources") or []:
            b, r = src.get("blocks", 0), src.get("relayed_blocks", 0)
            blocks["relayed"] += r
            blocks["seed_node" if src.get("peer") == seed_id else "peers_direct"] += b - r
        fin = last_with(os.path.join(d, "peer%d" % k, "out.txt"), "finished_unix")
        times.append(round(float(fin) - t0, 2) if fin else None)
        up = last_with(os.path.join(d, "peer%d" % k, "out.txt"), "uploaded_bytes")
        uploaded.append(up)
    done = [t for t in times if t is not None]
    all_done = max(done) if len(done) == n else None
    eg = int(egress) if egress not in ("", None) else None
    r = {
        "label": label, "n": n, "file_bytes": F, "seed_up_bps": us, "peer_up_bps": u,
        "tmin_s": round(tmin, 2) if tmin else None, "peer_done_s": times, "completed": len(done),
        "all_done_s": all_done, "over_tmin": round(all_done / tmin, 3) if all_done and tmin else None,
        "seed_egress_bytes": eg, "seed_egress_copies": round(eg / F, 3) if eg is not None else None,
        "peer_uploaded_bytes": uploaded, "blocks_from": blocks, "sha_ok": int(sha_ok), "timed_out": all_done is None,
        "timeout_s": int(timeout),
    }
    print(json.dumps(r))


def frac(xs):
    return round(sum(1 for x in xs if x) / len(xs), 3) if xs else None


def errors(rs):
    out = {}
    for r in rs:
        if not r["completed"]:
            why = "hang" if r["hang"] else (r["error"] or "exit %d" % r["exit_code"])
            out[why] = out.get(why, 0) + 1
    return out


def blocks_from(rs):
    # Completed transfers' blocks by source: the publisher directly, through a relay, others
    # (the seed node).
    out = {"publisher_direct": 0, "relayed": 0, "other_direct": 0}
    for r in rs:
        for src in r["bytes_from"].get("sources") or []:
            b, rel = src.get("blocks", 0), src.get("relayed_blocks", 0)
            out["relayed"] += rel
            out["publisher_direct" if src.get("peer") == r.get("a_id") else "other_direct"] += b - rel
    return out


def cmd_summary(work, rtt_json, loss, trials, quick):
    recs = json_lines(os.path.join(work, "trials.jsonl"))
    by = {k: [r for r in recs if r["kind"] == k] for k in ("tcp", "quic", "sym")}
    secs = lambda rs: [r["punch_ok_secs"] for r in rs if r["punch_ok_secs"] is not None]
    flash = {}
    for label in ("nat", "no_nat"):
        v = json_lines(os.path.join(work, "flash_%s" % label, "result.json"))
        flash[label] = v[-1] if v else {}
    nat, pub = flash["nat"], flash["no_nat"]
    lt = (json_lines(os.path.join(work, "flash_libtorrent", "result.json")) or [{}])[-1]
    eg_nat, eg_pub = nat.get("seed_egress_bytes"), pub.get("seed_egress_bytes")
    rtt = json.loads(rtt_json) if rtt_json else {}
    nat_check = rtt.pop("nat", {})
    s = {
        "direct_tcp": frac([r["direct"] for r in by["tcp"]]),
        "direct_quic": frac([r["direct"] for r in by["quic"]]),
        "median_direct_s": median(secs(by["tcp"]) + secs(by["quic"])),
        "median_direct_s_tcp": median(secs(by["tcp"])),
        "median_direct_s_quic": median(secs(by["quic"])),
        "completed_tcp": frac([r["completed"] for r in by["tcp"]]),
        "completed_quic": frac([r["completed"] for r in by["quic"]]),
        "hangs_pair": sum(1 for r in by["tcp"] + by["quic"] if r["hang"]),
        "symmetric_completed": frac([r["completed"] for r in by["sym"]]),
        "symmetric_hangs": sum(1 for r in by["sym"] if r["hang"]),
        "symmetric_trials": len(by["sym"]),
        "flash_crowd_over_tmin": nat.get("over_tmin"),
        "flash_crowd_no_nat_over_tmin": pub.get("over_tmin"),
        "seed_egress_vs_no_nat": round(eg_nat / eg_pub, 3) if eg_nat is not None and eg_pub else None,
        "flash_seed_egress_copies": nat.get("seed_egress_copies"),
        "flash_no_nat_seed_egress_copies": pub.get("seed_egress_copies"),
        "flash_completed": nat.get("completed"), "flash_no_nat_completed": pub.get("completed"),
        "flash_tmin_s": nat.get("tmin_s") or pub.get("tmin_s") or lt.get("tmin_s"),
        "flash_libtorrent_over_tmin": lt.get("over_tmin"),
        "flash_libtorrent_seed_egress_copies": lt.get("seed_egress_copies"),
        "flash_libtorrent_completed": lt.get("completed"),
        "rtt_ms_measured": rtt.get("home_to_home", {}).get("median_ms"),
        "rtt_ms": {k: v.get("median_ms") for k, v in rtt.items()},
        "nat": nat_check,
        "loss": float(loss), "trials": int(trials), "quick": quick == "1",
        "node_fields_seen": sorted({f for r in recs for f in r.get("fields_present", [])}),
        "errors": {k: errors(rs) for k, rs in by.items() if rs},
        "symmetric_blocks_from": blocks_from(by["sym"]),
    }
    print(json.dumps(s))


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
PY

# ------------------------------------------------------------------ the network
ns_add() { # NAME: a namespace with lo up, rp_filter off
  ip netns add "$P$1"
  NAMESPACES+=("$P$1")
  ip -n "$P$1" link set lo up
  in_ns "$1" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
}
# link NS1 IF1 ADDR1 NS2 IF2 ADDR2 (addresses with /len): a veth pair, MTU-sized packets only
link() {
  ip -n "$P$1" link add name "$2" type veth peer name "$5" netns "$P$4"
  ip -n "$P$1" link set dev "$2" gso_max_segs 1
  ip -n "$P$4" link set dev "$5" gso_max_segs 1
  ip -n "$P$1" addr add "$3" dev "$2"
  ip -n "$P$4" addr add "$6" dev "$5"
  ip -n "$P$1" link set "$2" up
  ip -n "$P$4" link set "$5" up
}
ipt() { local ns=$1; shift; ip netns exec "$P$ns" iptables -w 5 "$@"; }

build_lab() {
  log "building the lab: core, pub, $PUBLIC_PEERS public peers, $HOMES NAT routers and homes (prefix $P)"
  ns_add inet
  in_ns inet sysctl -qw net.ipv4.ip_forward=1
  ns_add pub
  link inet p0 10.100.0.1/24 pub eth0 $PUB_IP/24
  ip -n "${P}pub" route add default via 10.100.0.1
  local k n
  for k in $(seq 1 $PUBLIC_PEERS); do
    ns_add "pp$k"
    link inet "q$k" "10.101.$k.1/24" "pp$k" eth0 "10.101.$k.2/24"
    ip -n "${P}pp$k" route add default via "10.101.$k.1"
  done
  for n in $(seq 1 $HOMES); do
    ns_add "rtr$n"
    ns_add "home$n"
    link inet "r$n" "10.200.$n.1/24" "rtr$n" wan "10.200.$n.2/24"
    link "rtr$n" lan "192.168.$n.1/24" "home$n" eth0 "192.168.$n.2/24"
    ip -n "${P}rtr$n" route add default via "10.200.$n.1"
    ip -n "${P}home$n" route add default via "192.168.$n.1"
    in_ns "rtr$n" sysctl -qw net.ipv4.ip_forward=1
    if [ "$n" -ge $SYM_FIRST ]; then
      ipt "rtr$n" -t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully # symmetric: a new port per flow
    else
      ipt "rtr$n" -t nat -A POSTROUTING -o wan -j MASQUERADE # home router: keeps the source port if free
    fi
    ipt "rtr$n" -P FORWARD DROP
    ipt "rtr$n" -A FORWARD -i lan -o wan -j ACCEPT
    ipt "rtr$n" -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    ipt "rtr$n" -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    ipt "rtr$n" -A INPUT -i wan -j DROP
  done
  # The core: random loss, then the delay (no --queue-bypass: nothing crosses undelayed).
  if [ "$LOSS" != 0 ]; then
    ipt inet -A FORWARD -m statistic --mode random --probability "$LOSS" -j DROP
  fi
  ipt inet -A FORWARD -j NFQUEUE --queue-num 0
  mkdir -p "$WORK/inet"
  spawn inet "$WORK/inet/netem.out" "$WORK/inet/netem.err" "$NETEM" --queue 0 --delay-ms "$HALF_MS"
  NETEM_PID=$LAST_PID
  wait_for 10 "shoal-netem to bind its queue ($WORK/inet/netem.err)" grep -q bound "$WORK/inet/netem.err"
  log "$(head -1 "$WORK/inet/netem.err")"
}

# Round trips, measured as TCP connect time (SYN out, SYN-ACK back) to a listener; and the NAT
# routers' behaviour (mapping per socket or per destination, unsolicited inbound dropped).
RTT_JSON=""
check_network() {
  local n=10 home_b=2
  mkdir -p "$WORK/rtt"
  spawn pub "$WORK/rtt/l_pub.out" "$WORK/rtt/l_pub.err" "$PY" "$WORK/lab.py" listen $PUB_IP $PROBE_PORT 60
  local lp1=$LAST_PID
  spawn pp1 "$WORK/rtt/l_pp1.out" "$WORK/rtt/l_pp1.err" "$PY" "$WORK/lab.py" listen 10.101.1.2 $PROBE_PORT 60
  local lp2=$LAST_PID
  spawn "home$home_b" "$WORK/rtt/l_h2.out" "$WORK/rtt/l_h2.err" "$PY" "$WORK/lab.py" listen 192.168.$home_b.2 $PROBE_PORT 60
  local lp3=$LAST_PID
  spawn pub "$WORK/rtt/echo.out" "$WORK/rtt/echo.err" "$PY" "$WORK/lab.py" udpecho $PUB_IP $((PROBE_PORT + 1)) $((PROBE_PORT + 2)) 60
  local lp4=$LAST_PID
  # Home to home: a temporary port forward on home2's router (the only way in through its NAT).
  ipt "rtr$home_b" -t nat -A PREROUTING -i wan -p tcp --dport $PROBE_PORT -j DNAT --to-destination 192.168.$home_b.2:$PROBE_PORT
  ipt "rtr$home_b" -I FORWARD 1 -i wan -o lan -p tcp -d 192.168.$home_b.2 --dport $PROBE_PORT -j ACCEPT
  sleep 0.5
  local a b c d e
  a=$(in_ns home1 "$PY" "$WORK/lab.py" rtt $PUB_IP $PROBE_PORT $n)
  b=$(in_ns home$SYM_FIRST "$PY" "$WORK/lab.py" rtt $PUB_IP $PROBE_PORT $n)
  c=$(in_ns pp2 "$PY" "$WORK/lab.py" rtt $PUB_IP $PROBE_PORT $n)
  d=$(in_ns home1 "$PY" "$WORK/lab.py" rtt 10.101.1.2 $PROBE_PORT $n)
  e=$(in_ns home1 "$PY" "$WORK/lab.py" rtt 10.200.$home_b.2 $PROBE_PORT $n)
  ipt "rtr$home_b" -D FORWARD -i wan -o lan -p tcp -d 192.168.$home_b.2 --dport $PROBE_PORT -j ACCEPT
  ipt "rtr$home_b" -t nat -D PREROUTING -i wan -p tcp --dport $PROBE_PORT -j DNAT --to-destination 192.168.$home_b.2:$PROBE_PORT
  # The NAT types: mapping seen from two ports of pub, and an unsolicited connection from outside.
  local f g h
  f=$(in_ns home1 "$PY" "$WORK/lab.py" natcheck $PUB_IP $((PROBE_PORT + 1)) $((PROBE_PORT + 2)))
  g=$(in_ns home$SYM_FIRST "$PY" "$WORK/lab.py" natcheck $PUB_IP $((PROBE_PORT + 1)) $((PROBE_PORT + 2)))
  h=$(in_ns pub "$PY" "$WORK/lab.py" blocked 10.200.$home_b.2 $PROBE_PORT)
  for p in $lp1 $lp2 $lp3 $lp4; do stop_pid "$p"; done
  RTT_JSON=$(printf '{"home_to_pub": %s, "symmetric_home_to_pub": %s, "public_to_pub": %s, "home_to_public_peer": %s, "home_to_home": %s, "nat": {"home_router": %s, "symmetric": %s, "unsolicited_inbound": "%s"}}' \
    "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h")
  echo "$RTT_JSON" >"$WORK/rtt/rtt.json"
  "$PY" - "$RTT_JSON" "$RTT_MS" <<'PY'
import json, sys
r, want = json.loads(sys.argv[1]), float(sys.argv[2])
nat = r.pop("nat")
print("NAT check: home router maps %s (seen as %s), symmetric NAT maps %s (seen as %s); unsolicited inbound: %s"
      % (nat["home_router"]["mapping"], nat["home_router"]["seen_as"], nat["symmetric"]["mapping"],
         nat["symmetric"]["seen_as"], nat["unsolicited_inbound"]))
if (nat["home_router"]["mapping"], nat["symmetric"]["mapping"], nat["unsolicited_inbound"]) != \
        ("endpoint-independent", "endpoint-dependent", "dropped"):
    print("WARNING: the NAT routers do not behave as configured")
print("measured RTT (TCP connect, median of 10; configured %.0f ms):" % want)
for k, v in r.items():
    print("  %-22s %s ms (min %s, %d failed connects)" % (k, v["median_ms"], v["min_ms"], v["failures"]))
bad = [k for k, v in r.items() if v["median_ms"] is None or not (0.9 * want <= v["median_ms"] <= 1.5 * want + 5)]
if bad:
    print("WARNING: RTT off the configured value on: " + ", ".join(bad))
PY
}

# ------------------------------------------------------------------ Shoal services on the pub site
TRACKER_ID="" SEED_ID="" TRACKER_TCP="" TRACKER_QUIC="" SEED_TCP=""
tracker_gauge() { in_ns pub "$PY" "$WORK/lab.py" gauge "http://$TRACKER_HTTP/stats" "$1"; }
seed_egress() { in_ns pub "$PY" "$WORK/lab.py" egress "http://$SEED_HTTP/stats" "$1"; }
seed_stored() { in_ns pub "$PY" "$WORK/lab.py" stored "http://$SEED_HTTP/stats" "$1"; }
gauge_above() { [ "$(tracker_gauge "$1")" -gt "$2" ]; }

# Identities of every publisher that may push (the seed node's allow-list is fixed at its start).
ALLOW=()
prepare_identities() {
  local kind i count
  local kinds=()
  [[ " $SCENARIOS " == *" pair "* ]] && kinds+=(tcp quic)
  [[ " $SCENARIOS " == *" symmetric "* ]] && kinds+=(sym)
  for kind in "${kinds[@]}"; do
    count=$TRIALS
    [ "$kind" = sym ] && count=$SYM_TRIALS
    for i in $(seq 1 "$count"); do
      mkdir -p "$WORK/$kind/$i/a" "$WORK/$kind/$i/b"
      "$SHOAL" --data-dir "$WORK/$kind/$i/a/data" id >"$WORK/$kind/$i/a/id.txt"
      if { [ "$kind" = sym ] && [ "$SYM_PUSH" = 1 ]; } || { [ "$kind" != sym ] && [ "$PAIR_PUSH" = 1 ]; }; then
        ALLOW+=(--allow "$(cat "$WORK/$kind/$i/a/id.txt")")
      fi
    done
  done
  for i in nat no_nat; do
    mkdir -p "$WORK/flash_$i/publisher"
    ALLOW+=(--allow "$("$SHOAL" --data-dir "$WORK/flash_$i/publisher/data" id)")
  done
}

start_services() {
  mkdir -p "$WORK/pub/tracker" "$WORK/pub/seednode"
  SEED_ID=$("$SHOAL" --data-dir "$WORK/pub/seednode" id --role seed-node)
  TRACKER_ID=$("$SHOAL" --data-dir "$WORK/pub/tracker" id --role tracker)
  TRACKER_TCP=/ip4/$PUB_IP/tcp/$TRACKER_PORT/p2p/$TRACKER_ID
  TRACKER_QUIC=/ip4/$PUB_IP/udp/$TRACKER_PORT/quic-v1/p2p/$TRACKER_ID
  SEED_TCP=/ip4/$PUB_IP/tcp/$SEED_PORT/p2p/$SEED_ID
  spawn pub "$WORK/pub/tracker/out.txt" "$WORK/pub/tracker/err.txt" \
    "$SHOAL" --data-dir "$WORK/pub/tracker" tracker --json --http "$TRACKER_HTTP" --allow-seed-node "$SEED_ID" \
    --listen "/ip4/$PUB_IP/tcp/$TRACKER_PORT" --listen "/ip4/$PUB_IP/udp/$TRACKER_PORT/quic-v1"
  wait_for 30 "the tracker's address ($WORK/pub/tracker/err.txt)" test -s "$WORK/pub/tracker/out.txt"
  spawn pub "$WORK/pub/seednode/out.txt" "$WORK/pub/seednode/err.txt" \
    "$SHOAL" --data-dir "$WORK/pub/seednode" seed-node --json --http "$SEED_HTTP" --store "$WORK/pub/seednode/store" \
    --policy fast --up-limit "$SEED_UP" --tracker "$TRACKER_TCP" "${ALLOW[@]}" \
    --listen "/ip4/$PUB_IP/tcp/$SEED_PORT" --listen "/ip4/$PUB_IP/udp/$SEED_PORT/quic-v1"
  wait_for 30 "the seed node's address ($WORK/pub/seednode/err.txt)" test -s "$WORK/pub/seednode/out.txt"
  log "tracker $TRACKER_TCP (and QUIC); seed node $SEED_TCP, up-limit $SEED_UP, ${#ALLOW[@]} allow args"
}

# ------------------------------------------------------------------ pair and symmetric trials
# trial KIND I HOME_A HOME_B PUSH: one transfer A -> B; appends a record to $WORK/trials.jsonl
trial() {
  local kind=$1 i=$2 ha=$3 hb=$4 push=$5
  local d=$WORK/$kind/$i listen=() tracker a_id link blob base t0 bpid rc=0 hang=0 el ok=0 egress apid
  case "$kind" in
    tcp) listen=(--listen /ip4/0.0.0.0/tcp/0); tracker=$TRACKER_TCP ;;
    quic) listen=(--listen /ip4/0.0.0.0/udp/0/quic-v1); tracker=$TRACKER_QUIC ;;
    *) listen=(--listen /ip4/0.0.0.0/tcp/0 --listen /ip4/0.0.0.0/udp/0/quic-v1); tracker=$TRACKER_TCP ;;
  esac
  a_id=$(cat "$d/a/id.txt")
  base=$(tracker_gauge seeders)
  spawn "$ha" "$d/a/out.txt" "$d/a/err.txt" "$SHOAL" --data-dir "$d/a/data" share "$PAIR_FILE" \
    "${listen[@]}" --tracker "$tracker" --up-limit 0 --no-dht --json
  apid=$LAST_PID
  wait_for 30 "A's link ($d/a/err.txt)" test -s "$d/a/out.txt"
  link=$(lab field "$d/a/out.txt" link)
  blob=$(lab field "$d/a/out.txt" blob_id)
  if [ "$push" = 1 ]; then
    timeout 120 ip netns exec "$P$ha" "$SHOAL" --data-dir "$d/a/data" push "$link" --to "$SEED_TCP" --json \
      >"$d/a/push.txt" 2>"$d/a/push.err" || log "$kind trial $i: push failed (see $d/a/push.err)"
  fi
  try_wait_for 10 gauge_above seeders "$base" || log "$kind trial $i: the tracker does not list A yet; going on"
  t0=$(now)
  spawn "$hb" "$d/b/out.txt" "$d/b/err.txt" "$SHOAL" --data-dir "$d/b/data" get "$link" -o "$d/b/file" \
    "${listen[@]}" --patience "$PATIENCE" --no-dht --json
  bpid=$LAST_PID
  for _ in $(seq 1 $((TRIAL_TIMEOUT * 10))); do
    kill -0 "$bpid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$bpid" 2>/dev/null; then
    hang=1
    stop_pid "$bpid"
    rc=124
  else
    wait "$bpid" || rc=$?
    forget "$bpid"
  fi
  el=$(awk -v a="$(now)" -v b="$t0" 'BEGIN{printf "%.2f", a-b}')
  [ -f "$d/b/file" ] && [ "$(sha256sum <"$d/b/file" | cut -d' ' -f1)" = "$PAIR_SHA" ] && ok=1
  egress=$(seed_egress "$blob")
  stop_pid "$apid"
  lab trial "$kind" "$i" "$d/b/out.txt" "$a_id" "$rc" "$hang" "$ok" "$el" "$egress" "$PAIR_BYTES" | tee -a "$WORK/trials.jsonl" |
    "$PY" -c 'import json,sys; r=json.load(sys.stdin); print("  %s trial %d: %s exit %d in %.1f s, direct %s, punch %s, relayed %s B, seed node %s B%s" % (r["kind"], r["trial"], "COMPLETED" if r["completed"] else "failed", r["exit_code"], r["elapsed_s"], r["direct"], r["punch_ok_secs"], r["bytes_from"]["relayed_bytes"], r["bytes_from"]["seed_node_egress_bytes"], (" (%s)" % r["error"]) if r["error"] else ""))' >&2
  rm -f "$d/b/file"
}

# udp_drops NS: datagrams the namespace's UDP sockets dropped for a full receive buffer, so far
udp_drops() { in_ns "$1" nstat -asz UdpRcvbufErrors 2>/dev/null | awk '/UdpRcvbufErrors/{print $2}'; }

scenario_pair() {
  local kind i
  for kind in tcp quic; do
    log "pair/$kind: $TRIALS trials, home1 -> home2 (home-router NAT both), $PAIR_MIB MiB, push to seed node: $PAIR_PUSH"
    for i in $(seq 1 "$TRIALS"); do trial "$kind" "$i" home1 home2 "$PAIR_PUSH"; done
    # QUIC's losses beyond LOSS: datagrams dropped because a socket's receive buffer was full
    log "pair/$kind: UDP datagrams dropped for a full socket receive buffer since the lab started:" \
      "home1 $(udp_drops home1), home2 $(udp_drops home2)"
  done
}

scenario_symmetric() {
  local i
  log "symmetric: $SYM_TRIALS trials, home$SYM_FIRST -> home$((SYM_FIRST + 1)) (symmetric NAT both), push to seed node: $SYM_PUSH"
  for i in $(seq 1 "$SYM_TRIALS"); do trial sym "$i" "home$SYM_FIRST" "home$((SYM_FIRST + 1))" "$SYM_PUSH"; done
}

# ------------------------------------------------------------------ flash crowd
# flash_run LABEL NS…: the publisher pushes FLASH_FILE to the seed node and leaves; the peers in the
# given namespaces `get --seed` it together. Writes $WORK/flash_LABEL/result.json.
flash_run() {
  local label=$1; shift
  local d=$WORK/flash_$label k base link blob t0 ns all alive egress ok=0 peers=("$@") pids=() spid i
  mkdir -p "$d/publisher"
  base=$(tracker_gauge seed_nodes)
  spawn pub "$d/publisher/out.txt" "$d/publisher/err.txt" "$SHOAL" --data-dir "$d/publisher/data" share "$FLASH_FILE" \
    --listen "/ip4/$PUB_IP/tcp/0" --no-dht --json
  spid=$LAST_PID
  wait_for 60 "the publisher's link ($d/publisher/err.txt)" test -s "$d/publisher/out.txt"
  stop_pid "$spid"
  link=$(lab field "$d/publisher/out.txt" link)
  blob=$(lab field "$d/publisher/out.txt" blob_id)
  timeout 300 ip netns exec "${P}pub" "$SHOAL" --data-dir "$d/publisher/data" push "$link" --to "$SEED_TCP" --json \
    >"$d/publisher/push.txt" 2>"$d/publisher/push.err" || die "flash $label: push to the seed node failed ($d/publisher/push.err)"
  wait_for 30 "the seed node to store blob $blob" seed_stored "$blob"
  try_wait_for 20 gauge_above seed_nodes "$base" || log "flash $label: the tracker lists no new seed-node entry yet; going on"
  link=$(lab relink "$link" "$TRACKER_TCP")
  log "flash $label: $FLASH_N peers (${peers[*]}) get $FLASH_MIB MiB, seed node $SEED_UP, peers $PEER_UP up"
  t0=$(now)
  k=0
  for ns in "${peers[@]}"; do
    k=$((k + 1))
    mkdir -p "$d/peer$k"
    spawn "$ns" "$d/peer$k/out.txt" "$d/peer$k/err.txt" "$SHOAL" --data-dir "$d/peer$k/data" get "$link" --seed \
      -o "$d/peer$k/file" --listen /ip4/0.0.0.0/tcp/0 --up-limit "$PEER_UP" --patience 0 --no-dht --json
    pids+=("$LAST_PID")
  done
  for i in $(seq 1 $((FLASH_TIMEOUT * 5))); do
    all=1 alive=0
    for k in $(seq 1 "$FLASH_N"); do
      grep -q '"finished_unix"' "$d/peer$k/out.txt" 2>/dev/null || all=0
      kill -0 "${pids[$((k - 1))]}" 2>/dev/null && alive=$((alive + 1))
    done
    [ "$all" = 1 ] && break
    [ "$alive" = 0 ] && { log "flash $label: every peer exited before all were done"; break; }
    sleep 0.2
  done
  [ "$all" = 1 ] || log "flash $label: not all peers done after ${FLASH_TIMEOUT} s"
  egress=$(seed_egress "$blob")
  sleep 1.2 # one more status line from each peer (uploaded_bytes)
  for k in "${pids[@]}"; do stop_pid "$k"; done
  for k in $(seq 1 "$FLASH_N"); do
    [ -f "$d/peer$k/file" ] && [ "$(sha256sum <"$d/peer$k/file" | cut -d' ' -f1)" = "$FLASH_SHA" ] && ok=$((ok + 1))
    rm -f "$d/peer$k/file"
  done
  lab flash "$label" "$d" "$FLASH_N" "$FLASH_BYTES" "$SEED_UP" "$PEER_UP" "$t0" "$egress" "$ok" "$FLASH_TIMEOUT" "$SEED_ID" >"$d/result.json"
  "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print("  flash %s: all done %s s = %s x T_min (%s s), %d/%d done, seed node sent %s copies, peers done at %s, blocks from %s, sha ok %d" % (r["label"], r["all_done_s"], r["over_tmin"], r["tmin_s"], r["completed"], r["n"], r["seed_egress_copies"], r["peer_done_s"], r["blocks_from"], r["sha_ok"]))' "$d/result.json" >&2
}

scenario_flash() {
  local homes=() pubs=() k
  for k in $(seq 1 $HOMES); do homes+=("home$k"); done
  for k in $(seq 1 $PUBLIC_PEERS); do pubs+=("pp$k"); done
  flash_run nat "${homes[@]}"
  flash_run no_nat "${pubs[@]}"
}

# ------------------------------------------------------------------ libtorrent, same lab
# The WAN flash crowd of `flash no_nat` again with libtorrent-rasterbar (python3-libtorrent; its
# defaults, uTP on, as ../shared/bench/flash_crowd.sh runs it): a seeder in pub capped at SEED_UP and
# the 8 public peers capped at PEER_UP, same file, RTT and loss. No tracker: every peer is told every
# address at once (what a tracker's first answer gives). Writes $WORK/flash_libtorrent/result.json.
LT_PY=${LT_PY:-/usr/bin/python3} # Debian's python3-libtorrent is built for the system python
LT_PORT=6881
lt_write() {
  cat >"$1" <<'PY'
import hashlib, json, os, sys, time
import libtorrent as lt

def size(text):
    units = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    num = text.rstrip("KMGiB")
    return int(float(num) * units[text[len(num):]])

def cmd_make(path, out):
    fs = lt.file_storage()
    lt.add_files(fs, path)
    t = lt.create_torrent(fs, 1 << 20)  # 1 MiB pieces, as the shared flash-crowd bench
    lt.set_piece_hashes(t, os.path.dirname(path))
    open(out, "wb").write(lt.bencode(t.generate()))

def cmd_peer(torrent, save, ip, up, seed, gof, peers):
    ses = lt.session({
        "listen_interfaces": "%s:%d" % (ip, int(os.environ["LT_PORT"])),
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        # the lab's private addresses are "local network" to libtorrent, which would exempt them
        "ignore_limits_on_local_network": False,
        "upload_rate_limit": size(up), "download_rate_limit": 0,
        "alert_mask": lt.alert.category_t.error_notification,
    })
    f = lt.ip_filter()  # every address in the global (rate-limited) peer class
    f.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
    ses.set_peer_class_filter(f)
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save
    atp.flags &= ~lt.torrent_flags.auto_managed
    atp.flags &= ~lt.torrent_flags.paused
    h = ses.add_torrent(atp)
    if seed == "1":
        while not h.status().is_seeding:
            time.sleep(0.05)  # the seeder hash-checks its copy first
    open(os.path.join(save, "ready"), "w").close()
    while gof and not os.path.exists(gof):
        time.sleep(0.005)
    if seed != "1":
        for p in peers.split(","):
            a, port = p.rsplit(":", 1)
            if a != ip:
                h.connect_peer((a, int(port)))
    done = False
    while True:
        st = h.status()
        if not done and st.is_seeding and seed != "1":
            open(os.path.join(save, "done"), "w").write("%.6f\n" % time.time())
            done = True
        tmp = os.path.join(save, "stats.tmp")
        json.dump({"up": st.total_payload_upload, "wire_up": st.total_upload, "peers": st.num_peers}, open(tmp, "w"))
        os.replace(tmp, os.path.join(save, "stats.json"))
        ses.pop_alerts()
        time.sleep(0.05)

def cmd_result(d, n, file_len, seed_up, peer_up, t0, sha_ok, timeout):
    n, F, us, u, t0 = int(n), int(file_len), size(seed_up), size(peer_up), float(t0)
    tmin = max(F / us, n * F / (us + n * u))
    times = []
    for k in range(1, n + 1):
        try:
            times.append(round(float(open(os.path.join(d, "peer%d" % k, "done")).read()) - t0, 2))
        except (OSError, ValueError):
            times.append(None)
    done = [t for t in times if t is not None]
    all_done = max(done) if len(done) == n else None
    st = json.load(open(os.path.join(d, "seed", "stats.json")))
    print(json.dumps({
        "label": "libtorrent", "impl": "libtorrent-rasterbar %s" % lt.__version__, "n": n, "file_bytes": F,
        "tmin_s": round(tmin, 2), "peer_done_s": times, "completed": len(done), "all_done_s": all_done,
        "over_tmin": round(all_done / tmin, 3) if all_done else None,
        "seed_egress_bytes": st["up"], "seed_egress_copies": round(st["up"] / F, 3),
        "seed_wire_copies": round(st["wire_up"] / F, 3), "sha_ok": int(sha_ok), "timeout_s": int(timeout),
    }))

globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
PY
}

scenario_libtorrent() {
  local d=$WORK/flash_libtorrent k t0 all i ok=0 peers pids=() name
  "$LT_PY" -c 'import libtorrent' 2>/dev/null ||
    die "the libtorrent scenario needs python3-libtorrent for $LT_PY (apt-get install python3-libtorrent)"
  mkdir -p "$d/seed"
  lt_write "$d/lt.py"
  name=$(basename "$FLASH_FILE")
  "$LT_PY" "$d/lt.py" make "$FLASH_FILE" "$d/flash.torrent"
  cp "$FLASH_FILE" "$d/seed/$name"
  peers="$PUB_IP:$LT_PORT"
  for k in $(seq 1 "$FLASH_N"); do peers+=",10.101.$k.2:$LT_PORT"; done
  export LT_PORT
  spawn pub "$d/seed/out.txt" "$d/seed/err.txt" "$LT_PY" "$d/lt.py" peer "$d/flash.torrent" "$d/seed" "$PUB_IP" \
    "$SEED_UP" 1 "" "$peers"
  pids+=("$LAST_PID")
  wait_for 120 "the libtorrent seeder to check its copy ($d/seed/err.txt)" test -e "$d/seed/ready"
  for k in $(seq 1 "$FLASH_N"); do
    mkdir -p "$d/peer$k"
    spawn "pp$k" "$d/peer$k/out.txt" "$d/peer$k/err.txt" "$LT_PY" "$d/lt.py" peer "$d/flash.torrent" "$d/peer$k" \
      "10.101.$k.2" "$PEER_UP" 0 "$d/go" "$peers"
    pids+=("$LAST_PID")
  done
  # python + libtorrent take a moment to start: start all idle, then release them together
  for k in $(seq 1 "$FLASH_N"); do wait_for 30 "libtorrent peer $k to start" test -e "$d/peer$k/ready"; done
  log "flash libtorrent: $FLASH_N public peers get $FLASH_MIB MiB, seeder $SEED_UP, peers $PEER_UP up ($("$LT_PY" -c 'import libtorrent as lt; print(lt.__version__)'))"
  t0=$(now)
  touch "$d/go"
  for i in $(seq 1 $((FLASH_TIMEOUT * 5))); do
    all=1
    for k in $(seq 1 "$FLASH_N"); do [ -s "$d/peer$k/done" ] || all=0; done
    [ "$all" = 1 ] && break
    sleep 0.2
  done
  [ "$all" = 1 ] || log "flash libtorrent: not all peers done after ${FLASH_TIMEOUT} s"
  sleep 0.2 # one more stats line from the seeder
  for k in $(seq 1 "$FLASH_N"); do
    [ -f "$d/peer$k/$name" ] && [ "$(sha256sum <"$d/peer$k/$name" | cut -d' ' -f1)" = "$FLASH_SHA" ] && ok=$((ok + 1))
  done
  "$LT_PY" "$d/lt.py" result "$d" "$FLASH_N" "$FLASH_BYTES" "$SEED_UP" "$PEER_UP" "$t0" "$ok" "$FLASH_TIMEOUT" >"$d/result.json"
  for k in "${pids[@]}"; do stop_pid "$k"; done
  for k in $(seq 1 "$FLASH_N"); do rm -f "$d/peer$k/$name"; done
  "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print("  flash libtorrent: all done %s s = %s x T_min (%s s), %d/%d done, seeder sent %s copies, peers done at %s, sha ok %d" % (r["all_done_s"], r["over_tmin"], r["tmin_s"], r["completed"], r["n"], r["seed_egress_copies"], r["peer_done_s"], r["sha_ok"]))' "$d/result.json" >&2
}

# ------------------------------------------------------------------ main
SYM_TRIALS=$((TRIALS / 4))
[ "$SYM_TRIALS" -ge 3 ] || SYM_TRIALS=3
START=$SECONDS
log "RTT ${RTT_MS} ms, loss $LOSS, trials $TRIALS (symmetric $SYM_TRIALS), scenarios: $SCENARIOS; $("$SHOAL" --version)"
mkdir -p "$WORK/data"
PAIR_FILE=$WORK/data/pair.bin
FLASH_FILE=$WORK/data/flash.bin
PAIR_BYTES=$((PAIR_MIB << 20))
FLASH_BYTES=$((FLASH_MIB << 20))
head -c "$PAIR_BYTES" /dev/urandom >"$PAIR_FILE"
PAIR_SHA=$(sha256sum <"$PAIR_FILE" | cut -d' ' -f1)
FLASH_SHA=""
if [[ " $SCENARIOS " == *" flash "* || " $SCENARIOS " == *" libtorrent "* ]]; then
  head -c "$FLASH_BYTES" /dev/urandom >"$FLASH_FILE"
  FLASH_SHA=$(sha256sum <"$FLASH_FILE" | cut -d' ' -f1)
fi
: >"$WORK/trials.jsonl"

build_lab
check_network
prepare_identities
start_services
for s in $SCENARIOS; do "scenario_$s"; done

stop_pid "$NETEM_PID"
log "$(tail -1 "$WORK/inet/netem.err")"
log "done in $((SECONDS - START)) s; logs in $WORK"
lab summary "$WORK" "$RTT_JSON" "$LOSS" "$TRIALS" "$QUICK" >"$WORK/summary.json"
"$PY" - "$WORK/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print("pair: direct TCP %s, direct QUIC %s, median time to a direct connection %s s; completed TCP %s, QUIC %s; hangs %s"
      % (s["direct_tcp"], s["direct_quic"], s["median_direct_s"], s["completed_tcp"], s["completed_quic"], s["hangs_pair"]))
print("symmetric NAT: %s of %d transfers completed, %d hung; blocks from %s" % (s["symmetric_completed"], s["symmetric_trials"], s["symmetric_hangs"], s["symmetric_blocks_from"]))
if any(s["errors"].values()):
    print("failures by kind: %s" % s["errors"])
print("flash crowd: behind NAT %s x T_min, public %s x T_min (T_min %s s); seed node egress NAT/public = %s (%s vs %s copies)"
      % (s["flash_crowd_over_tmin"], s["flash_crowd_no_nat_over_tmin"], s["flash_tmin_s"], s["seed_egress_vs_no_nat"],
         s["flash_seed_egress_copies"], s["flash_no_nat_seed_egress_copies"]))
if s["flash_libtorrent_over_tmin"] is not None or s["flash_libtorrent_completed"] is not None:
    print("flash crowd, public peers, libtorrent: %s x T_min; seeder sent %s copies"
          % (s["flash_libtorrent_over_tmin"], s["flash_libtorrent_seed_egress_copies"]))
missing = {"direct_from", "punches", "relayed_bytes"} - set(s["node_fields_seen"])
if missing and (s["direct_tcp"] is not None or s["direct_quic"] is not None or s["symmetric_trials"]):
    print("note: no get --json result line had %s (a failed get prints only an error object): "
          "counted as no direct connection" % ", ".join(sorted(missing)))
PY
cat "$WORK/summary.json"
