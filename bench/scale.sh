#!/usr/bin/env bash
# Scale-out figures (BENCHMARKS.md, "Scale-out"): one run of the shared harness
# (/work/shared/bench/fanout.mjs, or $HARNESS) against
#   mem1    one memory node
#   redis1  one Redis-engine node
#   redis2  two Redis-engine nodes, subscribers spread over both (--sub-ports), publisher on the first
#   cluster2  two nodes on a local 3-master Redis Cluster (--redis-cluster; sharded pub/sub)
#   cluster2c the same with --redis-classic-pubsub (PUBLISH through the cluster bus)
#   redis1b, cluster2b  redis1 and cluster2 run from another checkout, $BASE_ROOT (before/after
#             a change in one run: git worktree add --detach /tmp/base <commit>)
# for the fanout and many-streams scenarios, REPS times interleaved. Besides the harness's JSON line,
# each run records CPU seconds (utime+stime from /proc/PID/stat) of every node and of redis-server,
# and the puts Redis ran (XADD calls, one per put, from INFO commandstats), over the whole run.
#
#   bash bench/scale.sh                 # REPS=3 DURATION=5; results in $TMPDIR/msgstream-scale-<time>/
#   REPS=1 DURATION=2 bash bench/scale.sh
#
# Each line of results.jsonl: the harness's fields plus config, nodes, node_cpu_s (per node),
# redis_cpu_s, redis_puts, redis_scripts (script calls).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
HARNESS=${HARNESS:-/work/shared/bench/fanout.mjs}
REPS=${REPS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONFIGS=${CONFIGS:-"mem1 redis1 redis2"}
SCENARIOS=${SCENARIOS:-"fanout streams"}
OUT=${OUT:-${TMPDIR:-/tmp}/msgstream-scale-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"
export NO_COLOR=1

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

RPORT=$(free_port)
RDIR=$(mktemp -d)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$RDIR" \
  --loglevel warning >"$OUT/redis.log" 2>&1 &
RPID=$!
PIDS+=("$RPID")
for _ in $(seq 100); do redis-cli -p "$RPORT" PING >/dev/null 2>&1 && break; sleep 0.1; done
rstat1() { redis-cli -p "$1" INFO commandstats | tr -d '\r' | awk -F'[=:,]' -v c="cmdstat_$2" '$1==c{print $3}'; }

# A 3-master cluster (no replicas) for the cluster configs.
CPORTS=() CPIDS=()
if [[ " $CONFIGS " == *" cluster"* ]]; then
  for i in 0 1 2; do
    p=$(free_port) b=$(free_port) d=$(mktemp -d)
    redis-server --port "$p" --cluster-port "$b" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file nodes.conf --save '' --appendonly no --dir "$d" --loglevel warning \
      >>"$OUT/cluster.log" 2>&1 &
    CPIDS+=("$!") CPORTS+=("$p") PIDS+=("$!")
  done
  for p in "${CPORTS[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$p" PING >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CPORTS[@]}") --cluster-replicas 0 \
    --cluster-yes >>"$OUT/cluster.log" 2>&1
  for _ in $(seq 100); do
    redis-cli -p "${CPORTS[0]}" CLUSTER INFO | grep -q cluster_state:ok && break
    sleep 0.1
  done
fi
MODE=single
ports_of_redis() { if [ "$MODE" = cluster ]; then echo "${CPORTS[@]}"; else echo "$RPORT"; fi; }
pids_of_redis() { if [ "$MODE" = cluster ]; then echo "${CPIDS[@]}"; else echo "$RPID"; fi; }
rstat() { local t=0 v; for p in $(ports_of_redis); do v=$(rstat1 "$p" "$1"); t=$((t + ${v:-0})); done; echo "$t"; }
rcpu() { local t=0; for p in $(pids_of_redis); do t=$((t + $(ticks "$p"))); done; echo "$t"; }

start_node() { # $1 port, $2 engine (memory|redis), $3 prefix, $4 checkout; prints the pid
  # NODE_FLAGS: extra deno flags for every node, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
  local args=(run -A ${NODE_FLAGS:-} "$4/server.ts" --port "$1" --log-level warn)
  [ "$2" = redis ] && args+=(--redis "redis://127.0.0.1:$RPORT" --redis-prefix "$3")
  [ "$2" = cluster ] && args+=(--redis "redis://127.0.0.1:${CPORTS[0]}" --redis-cluster --redis-prefix "$3")
  [ "$2" = clusterc ] && args+=(--redis "redis://127.0.0.1:${CPORTS[0]}" --redis-cluster --redis-classic-pubsub --redis-prefix "$3")
  deno "${args[@]}" >>"$OUT/nodes.log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && break
    sleep 0.05
  done
  echo "$pid"
}

for rep in $(seq "$REPS"); do
  for scenario in $SCENARIOS; do
    for config in $CONFIGS; do
      root=$ROOT
      case $config in
        mem1) n=1 engine=memory ;;
        redis1) n=1 engine=redis ;;
        redis2) n=2 engine=redis ;;
        redis3) n=3 engine=redis ;;
        cluster1) n=1 engine=cluster ;;
        cluster2) n=2 engine=cluster ;;
        cluster2c) n=2 engine=clusterc ;;
        redis1b) n=1 engine=redis root=${BASE_ROOT:?redis1b needs BASE_ROOT} ;;
        cluster2b) n=2 engine=cluster root=${BASE_ROOT:?cluster2b needs BASE_ROOT} ;;
        *) echo "unknown config $config" >&2; exit 1 ;;
      esac
      prefix="s${rep}${scenario}${config}:"
      MODE=single
      [[ "$engine" = cluster* ]] && MODE=cluster
      ports=() pids=()
      for i in $(seq "$n"); do
        p=$(free_port)
        pid=$(start_node "$p" "$engine" "$prefix" "$root")
        ports+=("$p") pids+=("$pid") PIDS+=("$pid")
      done
      sub_ports=$(IFS=,; echo "${ports[*]}")
      before=()
      for pid in "${pids[@]}"; do before+=("$(ticks "$pid")"); done
      r0=$(rcpu) x0=$(rstat xadd) e0=$(rstat evalsha)
      extra=()
      [ "$n" -gt 1 ] && extra=(--sub-ports "$sub_ports")
      # CPU ticks of every node and of Redis, and Redis' XADD count, every 0.1 s: the harness's
      # measurement window is cut out of these afterwards.
      samples="$OUT/samples-$rep-$scenario-$config.txt"
      (
        while :; do
          l="$(date +%s.%N)"
          for pid in "${pids[@]}"; do l="$l $(ticks "$pid")"; done
          echo "$l $(rcpu) $(rstat xadd)"
          sleep 0.1
        done
      ) >"$samples" 2>/dev/null &
      sampler=$!
      t0=$(date +%s.%N)
      line=$(node "$HARNESS" --proto msgstream --port "${ports[0]}" --scenario "$scenario" \
        --duration "$DURATION" --warmup "$WARMUP" --label "$config" "${extra[@]}" 2>>"$OUT/harness.log" || true)
      kill "$sampler" 2>/dev/null || true
      wait "$sampler" 2>/dev/null || true
      r1=$(rcpu) x1=$(rstat xadd) e1=$(rstat evalsha)
      cpus=()
      for i in "${!pids[@]}"; do
        cpus+=("$(awk -v a="${before[$i]}" -v b="$(ticks "${pids[$i]}")" -v hz="$HZ" 'BEGIN{printf "%.3f", (b-a)/hz}')")
      done
      for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
      node_cpu=$(IFS=,; echo "${cpus[*]}")
      extra_json=$(printf '{"config":"%s","nodes":%d,"rep":%d,"node_cpu_s":[%s],"redis_cpu_s":%s,"redis_puts":%d,"redis_scripts":%d}' \
        "$config" "$n" "$rep" "$node_cpu" \
        "$(awk -v a="$r0" -v b="$r1" -v hz="$HZ" 'BEGIN{printf "%.3f", (b-a)/hz}')" \
        "$(( ${x1:-0} - ${x0:-0} ))" "$(( ${e1:-0} - ${e0:-0} ))")
      if [ -n "$line" ]; then
        echo "$line" | node "$ROOT/bench/scale_window.mjs" "$extra_json" "$samples" "$t0" "$WARMUP" "$HZ" "$n" |
          tee -a "$OUT/results.jsonl"
      else
        echo "$extra_json" | tee -a "$OUT/results.jsonl"
      fi
    done
  done
done
echo "results: $OUT/results.jsonl"
