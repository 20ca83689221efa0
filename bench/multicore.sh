#!/usr/bin/env bash
# Multi-core figures (BENCHMARKS.md, "Multi-core"): one run of the shared harness
# (/work/shared/bench/fanout.mjs, or $HARNESS) against
#   mem1    today's server: one process, one thread, the memory hub (server.ts)
#   part1   serveWorkers() with 1 worker: the partition engine, no hop (bench/multicore_server.ts)
#   part2   serveWorkers() with 2 workers on one reusePort port, streams partitioned by hash
# for the fanout and many-streams scenarios, REPS times interleaved. Every config is one process,
# so the harness's server CPU (utime+stime of the listening process) is the sum over its threads.
# Each worker logs, when it stops, the messages it sent to the other worker and in how many
# batches (postMessage calls); they are added to each result line.
#
#   bash bench/multicore.sh              # REPS=3 DURATION=5; results in $TMPDIR/msgstream-multicore-<time>/
#   REPS=1 DURATION=2 bash bench/multicore.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
HARNESS=${HARNESS:-/work/shared/bench/fanout.mjs}
REPS=${REPS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONFIGS=${CONFIGS:-"mem1 part1 part2"}
SCENARIOS=${SCENARIOS:-"fanout streams"}
OUT=${OUT:-${TMPDIR:-/tmp}/msgstream-multicore-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"
export NO_COLOR=1

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; }
trap cleanup EXIT

for rep in $(seq "$REPS"); do
  for scenario in $SCENARIOS; do
    for config in $CONFIGS; do
      port=$(free_port)
      log="$OUT/server-$rep-$scenario-$config.log"
      case $config in
        mem1) deno run -A "$ROOT/server.ts" --port "$port" --log-level warn >"$log" 2>&1 & ;;
        part1) deno run -A --unstable-net "$ROOT/bench/multicore_server.ts" --workers 1 --port "$port" >"$log" 2>&1 & ;;
        part2) deno run -A --unstable-net "$ROOT/bench/multicore_server.ts" --workers 2 --port "$port" >"$log" 2>&1 & ;;
        *) echo "unknown config $config" >&2; exit 1 ;;
      esac
      PID=$!
      for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.05
      done
      line=$(node "$HARNESS" --proto msgstream --port "$port" --scenario "$scenario" --rep "$rep" \
        --duration "$DURATION" --warmup "$WARMUP" --label "$config" --server-pid "$PID" 2>>"$OUT/harness.log" | tail -1 || true)
      kill -TERM "$PID" 2>/dev/null || true
      wait "$PID" 2>/dev/null || true
      PID=
      # "worker stopped worker=I owned=K forwarded=N batches=M" per worker: summed.
      fwd=$(awk '/worker stopped/{for(i=1;i<=NF;i++){split($i,a,"="); if(a[1]=="forwarded")f+=a[2]; if(a[1]=="batches")b+=a[2]}} END{printf "%d %d", f, b}' "$log")
      set -- $fwd
      if [ -n "$line" ]; then
        echo "$line" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s);
          r.config=process.argv[1]; r.forwarded=+process.argv[2]; r.batches=+process.argv[3]; console.log(JSON.stringify(r));})' \
          "$config" "$1" "$2" | tee -a "$OUT/results.jsonl"
      else
        echo "{\"label\":\"$config\",\"scenario\":\"$scenario\",\"rep\":$rep,\"error\":\"no output\"}" | tee -a "$OUT/results.jsonl"
      fi
    done
  done
done
node "$(dirname "$HARNESS")/report.mjs" "$OUT/results.jsonl" | tee "$OUT/table.md"
echo "results: $OUT/results.jsonl"
