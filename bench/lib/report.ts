// Turns the raw samples into summaries, the printed tables and the JSON file.
import type { ContainerdSamples } from "./containerd.js";
import type { FloorSample, SandboxSample } from "./measure.js";
import type { KernelEnv } from "./env.js";
import { round, summarize, type Summary } from "./stats.js";

/** The issue's target: hako run /bin/true ≤ TARGET × (floor + agent start). */
export const TARGET = 1.25;

export interface KernelSamples {
  floor: FloorSample[];
  run: number[];
  sandbox: SandboxSample[];
  /** `hako --version` spawn → exit. */
  cli: number[];
}

export function emptySamples(): KernelSamples {
  return { floor: [], run: [], sandbox: [], cli: [] };
}

interface Metric {
  key: string;
  label: string;
  unit: "ms" | "MiB" | "x";
  values: number[];
}

export interface KernelResult {
  kernel: string;
  release: string;
  accel: string;
  accelReason: string;
  summaries: Record<string, Summary & { label: string; unit: string }>;
  /**
   * The issue's target on the medians; `paired` is the median of each run's
   * run / agent ready measured beside it (the same iteration), which this
   * host's drift between iterations moves less.
   */
  target: { value: number; limit: number; met: boolean; floorMs: number; agentStartMs: number; runMs: number; paired: number; pairedMet: boolean };
  samples: KernelSamples;
}

function metrics(s: KernelSamples): Metric[] {
  const n = Math.min(s.floor.length, s.run.length, s.sandbox.length);
  const idx = [...Array(n).keys()];
  const floor = s.floor.map((f) => f.markerMs);
  return [
    { key: "floor", label: "floor: QEMU spawn → HAKO_PROBE_OK (boot to init)", unit: "ms", values: floor },
    { key: "floor_exit", label: "floor: QEMU spawn → QEMU exit", unit: "ms", values: s.floor.map((f) => f.exitMs) },
    { key: "run", label: "hako run /bin/true (spawn → exit 0)", unit: "ms", values: s.run },
    { key: "cli_startup", label: "hako --version (node + CLI start, no VM)", unit: "ms", values: s.cli },
    { key: "spawn_to_qmp", label: "sandbox: QEMU spawn → QMP running", unit: "ms", values: s.sandbox.map((x) => x.spawnToQmpMs) },
    { key: "agent_ready", label: "sandbox: QEMU spawn → agent ready", unit: "ms", values: s.sandbox.map((x) => x.spawnToAgentMs) },
    { key: "guest_agent_ready", label: "guest uptime at agent ready (agentReadyMs)", unit: "ms", values: s.sandbox.map((x) => x.guestAgentReadyMs) },
    { key: "agent_start", label: "agent start = agent ready − floor (paired)", unit: "ms", values: idx.map((i) => s.sandbox[i]!.spawnToAgentMs - floor[i]!) },
    { key: "create_sandbox", label: "agent ready → CreateSandbox done", unit: "ms", values: s.sandbox.map((x) => x.createSandboxMs) },
    { key: "destroy", label: "sandbox destroy (DestroySandbox + quit)", unit: "ms", values: s.sandbox.map((x) => x.destroyMs) },
    { key: "rss", label: "QEMU RSS after agent ready", unit: "MiB", values: s.sandbox.map((x) => x.rssMiB) },
    { key: "pss", label: "QEMU PSS after agent ready", unit: "MiB", values: s.sandbox.map((x) => x.pssMiB) },
    { key: "ratio_run_floor", label: "ratio run / floor", unit: "x", values: idx.map((i) => s.run[i]! / floor[i]!) },
    {
      key: "ratio_run_agent",
      label: "ratio run / (floor + agent start)",
      unit: "x",
      values: idx.map((i) => s.run[i]! / s.sandbox[i]!.spawnToAgentMs),
    },
  ];
}

export function summarizeKernel(k: KernelEnv, s: KernelSamples): KernelResult {
  const summaries: KernelResult["summaries"] = {};
  for (const m of metrics(s)) summaries[m.key] = { ...summarize(m.values), label: m.label, unit: m.unit };
  const floorMs = summaries.floor!.median;
  const agentStartMs = summaries.agent_ready!.median - floorMs;
  const runMs = summaries.run!.median;
  const value = runMs / (floorMs + agentStartMs);
  const paired = summaries.ratio_run_agent!.median;
  return {
    kernel: k.kernel,
    release: k.release,
    accel: k.probe.accel,
    accelReason: k.probe.reason,
    summaries,
    target: { value, limit: TARGET, met: value <= TARGET, floorMs, agentStartMs, runMs, paired, pairedMet: paired <= TARGET },
    samples: s,
  };
}

function fmt(x: number, unit: string): string {
  if (!Number.isFinite(x)) return "n/a";
  return unit === "x" ? `${x.toFixed(2)}x` : unit === "MiB" ? x.toFixed(1) : x.toFixed(0);
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padStart(n) : s.padEnd(n);
}

export function kernelTable(r: KernelResult): string {
  const lines: string[] = [];
  const n = r.summaries.run!.n;
  lines.push(`== kernel ${r.kernel}${r.release ? ` (${r.release})` : ""}, accel ${r.accel}, ${n} runs ==`);
  const w = 52;
  lines.push(`${pad("metric", w)}${pad("unit", 6)}${pad("median", 10, true)}${pad("min", 10, true)}${pad("max", 10, true)}`);
  lines.push("-".repeat(w + 36));
  for (const s of Object.values(r.summaries)) {
    lines.push(`${pad(s.label, w)}${pad(s.unit, 6)}${pad(fmt(s.median, s.unit), 10, true)}${pad(fmt(s.min, s.unit), 10, true)}${pad(fmt(s.max, s.unit), 10, true)}`);
  }
  const t = r.target;
  lines.push("-".repeat(w + 36));
  lines.push(
    `target: run ≤ ${t.limit} × (floor + agent start), with medians: floor ${t.floorMs.toFixed(0)} + agent start ${t.agentStartMs.toFixed(0)} ` +
      `(= agent ready ${(t.floorMs + t.agentStartMs).toFixed(0)}) → limit ${(t.limit * (t.floorMs + t.agentStartMs)).toFixed(0)} ms`,
  );
  lines.push(`        run (median) = ${t.runMs.toFixed(0)} ms → run / (floor + agent start) = ${t.value.toFixed(3)}  ${t.met ? "MET" : "NOT MET"}`);
  lines.push(`        paired (each run / the agent ready beside it, median) = ${t.paired.toFixed(3)}  ${t.pairedMet ? "MET" : "NOT MET"}`);
  return lines.join("\n");
}

const COMPARE_KEYS = ["floor", "agent_ready", "agent_start", "run", "rss", "pss", "ratio_run_floor", "ratio_run_agent"];

export function comparisonTable(results: readonly KernelResult[]): string {
  const w = 52;
  const lines = [`== medians by kernel ==`, `${pad("metric", w)}${results.map((r) => pad(r.kernel, 12, true)).join("")}`, "-".repeat(w + 12 * results.length)];
  for (const key of COMPARE_KEYS) {
    const first = results[0]?.summaries[key];
    if (!first) continue;
    lines.push(`${pad(`${first.label} (${first.unit})`, w)}${results.map((r) => pad(fmt(r.summaries[key]!.median, first.unit), 12, true)).join("")}`);
  }
  lines.push(`${pad(`run / (floor + agent start) ≤ ${TARGET}`, w)}${results.map((r) => pad(`${r.target.value.toFixed(3)} ${r.target.met ? "MET" : "NO"}`, 12, true)).join("")}`);
  lines.push(`${pad(`the same, paired ≤ ${TARGET}`, w)}${results.map((r) => pad(`${r.target.paired.toFixed(3)} ${r.target.pairedMet ? "MET" : "NO"}`, 12, true)).join("")}`);
  return lines.join("\n");
}

type Summaries = Record<string, Summary & { label: string; unit: string }>;

export interface ContainerdResult {
  containerdVersion: string;
  kernel: string;
  accel: string;
  summaries: Summaries;
  /** median(hako) / median(runc) of `ctr run --rm … /bin/true`. */
  ratioOfMedians: number;
  samples: ContainerdSamples;
}

export function summarizeContainerd(s: ContainerdSamples): ContainerdResult {
  const n = Math.min(s.hako.length, s.runc.length);
  const one = (x: number | undefined): number[] => (x === undefined ? [] : [x]);
  const ms: Metric[] = [
    { key: "ctr_run_hako", label: "ctr run --rm hako /bin/true (spawn → exit 0)", unit: "ms", values: s.hako },
    { key: "ctr_run_runc", label: "ctr run --rm runc /bin/true (spawn → exit 0)", unit: "ms", values: s.runc },
    { key: "ratio_hako_runc", label: "ratio hako / runc (paired)", unit: "x", values: [...Array(n).keys()].map((i) => s.hako[i]! / s.runc[i]!) },
    { key: "ctr_start_hako", label: "ctr run -d hako sleep 600 → task RUNNING (1 run)", unit: "ms", values: one(s.mem?.startMs) },
    { key: "shim_rss", label: "hako shim RSS, 1 container running", unit: "MiB", values: one(s.mem?.shimRssMiB) },
    { key: "shim_pss", label: "hako shim PSS, 1 container running", unit: "MiB", values: one(s.mem?.shimPssMiB) },
    { key: "qemu_rss", label: "its QEMU RSS", unit: "MiB", values: one(s.mem?.qemuRssMiB) },
    { key: "qemu_pss", label: "its QEMU PSS", unit: "MiB", values: one(s.mem?.qemuPssMiB) },
    { key: "runc_shim_rss", label: "runc shim RSS, 1 container running", unit: "MiB", values: one(s.runcMem?.shimRssMiB) },
    { key: "runc_shim_pss", label: "runc shim PSS, 1 container running", unit: "MiB", values: one(s.runcMem?.shimPssMiB) },
  ];
  const summaries: Summaries = {};
  for (const m of ms) summaries[m.key] = { ...summarize(m.values), label: m.label, unit: m.unit };
  const ratioOfMedians = summaries.ctr_run_hako!.median / summaries.ctr_run_runc!.median;
  return { containerdVersion: s.containerdVersion, kernel: s.kernel, accel: s.accel, summaries, ratioOfMedians, samples: s };
}

/** `hakoRunMs`: median `hako run /bin/true` of the same kernel from the boot section, when it ran. */
export function containerdTable(r: ContainerdResult, hakoRunMs?: number): string {
  const w = 52;
  const hako = r.summaries.ctr_run_hako!.median;
  const runc = r.summaries.ctr_run_runc!.median;
  const lines = [
    `== containerd ${r.containerdVersion} (ctr run, kernel ${r.kernel}, accel ${r.accel}), ${r.summaries.ctr_run_hako!.n} runs ==`,
    `${pad("metric", w)}${pad("unit", 6)}${pad("median", 10, true)}${pad("min", 10, true)}${pad("max", 10, true)}`,
    "-".repeat(w + 36),
  ];
  for (const s of Object.values(r.summaries)) {
    lines.push(`${pad(s.label, w)}${pad(s.unit, 6)}${pad(fmt(s.median, s.unit), 10, true)}${pad(fmt(s.min, s.unit), 10, true)}${pad(fmt(s.max, s.unit), 10, true)}`);
  }
  lines.push("-".repeat(w + 36));
  lines.push(`ctr run --rm /bin/true, medians: hako ${fmt(hako, "ms")} ms / runc ${fmt(runc, "ms")} ms = ${fmt(r.ratioOfMedians, "x")} (hako − runc = ${fmt(hako - runc, "ms")} ms)`);
  if (hakoRunMs !== undefined) lines.push(`ctr run hako − hako run (boot section, same kernel) = ${fmt(hako - hakoRunMs, "ms")} ms`);
  return lines.join("\n");
}

function roundSummaries(summaries: Summaries): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(summaries).map(([k, s]) => [k, { label: s.label, unit: s.unit, n: s.n, median: round(s.median, 3), min: round(s.min, 3), max: round(s.max, 3) }]),
  );
}

/** The JSON document: summaries rounded, raw samples kept; `sections` (e.g. `cri`) are added as they are. */
export function resultJson(meta: Record<string, unknown>, results: readonly KernelResult[], ctrd?: ContainerdResult, sections: Record<string, unknown> = {}): unknown {
  return {
    ...meta,
    ...(ctrd
      ? {
          containerd: {
            containerdVersion: ctrd.containerdVersion,
            kernel: ctrd.kernel,
            accel: ctrd.accel,
            ratioOfMedians: round(ctrd.ratioOfMedians, 3),
            summary: roundSummaries(ctrd.summaries),
            samples: ctrd.samples,
          },
        }
      : {}),
    ...sections,
    kernels: results.map((r) => ({
      kernel: r.kernel,
      release: r.release,
      accel: r.accel,
      accelReason: r.accelReason,
      target: { ...r.target, value: round(r.target.value, 3), paired: round(r.target.paired, 3), floorMs: round(r.target.floorMs), agentStartMs: round(r.target.agentStartMs), runMs: round(r.target.runMs) },
      summary: roundSummaries(r.summaries),
      samples: r.samples,
    })),
  };
}
