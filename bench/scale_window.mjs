// Joins the harness's JSON line (stdin) with bench/scale.sh's figures and cuts the harness's
// measurement window out of the CPU samples: CPU of every node and of Redis, and Redis' puts
// (XADD calls), over the window only; then costs per delivery and per put.
// Args: extra JSON, samples file, t0 (s), warmup (s), clock ticks per s, nodes.
import { readFileSync } from "node:fs";

const [extraJson, samplesFile, t0s, warmupS, hzS, nS] = process.argv.slice(2);
let input = "";
process.stdin.on("data", (d) => input += d).on("end", () => {
  const a = JSON.parse(input);
  const out = { ...a, ...JSON.parse(extraJson) };
  const n = Number(nS), hz = Number(hzS);
  const rows = readFileSync(samplesFile, "utf8").trim().split("\n").map((l) =>
    l.split(" ").map(Number)
  )
    .filter((r) => r.length === n + 3 && r.every(Number.isFinite));
  const start = Number(t0s) + (a.connect_ms + a.probe_ms) / 1000 + Number(warmupS);
  const end = start + a.duration_s;
  const at = (t) => rows.reduce((best, r) => Math.abs(r[0] - t) < Math.abs(best[0] - t) ? r : best);
  if (rows.length >= 2 && a.delivered_per_s > 0) {
    const [s0, s1] = [at(start), at(end)];
    const secs = s1[0] - s0[0];
    const nodeCpu = Array.from({ length: n }, (_, i) => (s1[1 + i] - s0[1 + i]) / hz);
    const redisCpu = (s1[n + 1] - s0[n + 1]) / hz;
    const puts = s1[n + 2] - s0[n + 2];
    const delivered = a.delivered_per_s * secs;
    const nodesCpu = nodeCpu.reduce((x, y) => x + y, 0);
    Object.assign(out, {
      win_s: +secs.toFixed(2),
      win_node_cpu_pct: nodeCpu.map((c) => +(100 * c / secs).toFixed(1)),
      win_redis_cpu_pct: +(100 * redisCpu / secs).toFixed(1),
      win_puts_per_s: Math.round(puts / secs),
      nodes_ns_per_delivery: Math.round(1e9 * nodesCpu / delivered),
      service_ns_per_delivery: Math.round(1e9 * (nodesCpu + redisCpu) / delivered),
      redis_us_per_put: puts > 0 ? +(1e6 * redisCpu / puts).toFixed(2) : null,
    });
  }
  // deno-lint-ignore no-console
  console.log(JSON.stringify(out));
});
