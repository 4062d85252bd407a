// The cri section's summaries, tables and JSON (see bench/lib/cri.ts).
import { HANDLERS, type CriSamples, type DensitySample, type Handler, type PodStartSample } from "./cri.js";
import { round, summarize, type Summary } from "./stats.js";

// Exported for the io section's report (throughput-report.ts), which prints its tables alike.
export type Unit = "ms" | "MiB" | "MB/s" | "x";
export type LabelledSummary = Summary & { label: string; unit: Unit };
export type Summaries = Record<string, LabelledSummary>;

export interface CriDensityResult {
  pods: number;
  settleMs: number;
  /** Sum of the pods' PSS, MiB. */
  totalPssMiB: number;
  memAvailableBeforeMiB: number;
  memAvailableSettledMiB: number;
  memAvailableAfterMiB: number;
}

export interface CriResult {
  containerdVersion: string;
  kernel: string;
  accel: string;
  network: string;
  /** Pod start table. */
  start: Summaries;
  /** median(hako) / median(runc) of the pod start. */
  startRatioOfMedians: number;
  /** Idle pods table. */
  memory: Summaries;
  density: Partial<Record<Handler, CriDensityResult>>;
  samples: CriSamples;
}

export function entry(label: string, unit: Unit, values: readonly number[]): LabelledSummary {
  return { ...summarize(values), label, unit };
}

function startSummaries(s: CriSamples): Summaries {
  const out: Summaries = {};
  const phase = (key: keyof PodStartSample): Record<Handler, number[]> => ({ hako: s.podStart.hako.map((x) => x[key]), runc: s.podStart.runc.map((x) => x[key]) });
  const total = phase("totalMs");
  for (const h of HANDLERS) out[`pod_start_${h}`] = entry(`${h}: pod start (RunPodSandbox → "started" logged)`, "ms", total[h]);
  const n = Math.min(total.hako.length, total.runc.length);
  out.ratio_hako_runc = entry("ratio hako / runc (paired)", "x", [...Array(n).keys()].map((i) => total.hako[i]! / total.runc[i]!));
  const phases: Array<[keyof PodStartSample, string]> = [
    ["runPodSandboxMs", "RunPodSandbox"],
    ["createContainerMs", "CreateContainer"],
    ["startContainerMs", "StartContainer"],
    ["logLineMs", "StartContainer done → \"started\" logged"],
    ["teardownMs", "teardown: Stop+RemovePodSandbox → shim gone"],
  ];
  for (const h of HANDLERS) {
    for (const [key, label] of phases) out[`${h}_${key.replace(/Ms$/, "")}`] = entry(`${h}: ${label}`, "ms", phase(key)[h]);
  }
  return out;
}

/** Per-pod PSS (or its anonymous part) of the processes in a role: "qemu", "shim", "pause", or "container" (any other: the container's processes). */
function rolePss(d: DensitySample, role: "qemu" | "shim" | "pause" | "container", part: "pssMiB" | "pssAnonMiB" = "pssMiB"): number[] {
  const named = ["qemu", "shim", "pause"];
  return d.perPod.map((p) =>
    p.processes.filter((m) => (role === "container" ? !named.includes(m.role) : m.role === role)).reduce((acc, m) => acc + m[part], 0),
  );
}

function memorySummaries(s: CriSamples): Summaries {
  const out: Summaries = {};
  const hako = s.density.hako;
  const runc = s.density.runc;
  if (hako) {
    out.hako_pod_pss = entry(`hako pod PSS (shim + QEMU), ${hako.pods} idle pods`, "MiB", hako.perPod.map((p) => p.pssMiB));
    out.hako_qemu_pss = entry("  its QEMU PSS", "MiB", rolePss(hako, "qemu"));
    out.hako_qemu_pss_anon = entry("    of which anonymous (Pss_Anon: guest RAM, TCG cache)", "MiB", rolePss(hako, "qemu", "pssAnonMiB"));
    out.hako_shim_pss = entry("  its shim PSS", "MiB", rolePss(hako, "shim"));
    out.hako_pod_rss = entry("hako pod RSS (shim + QEMU)", "MiB", hako.perPod.map((p) => p.rssMiB));
    out.hako_pod_start = entry("hako pod start while the others idle", "ms", hako.startMs);
  }
  if (runc) {
    out.runc_pod_pss = entry(`runc pod PSS (shim + pause + container), ${runc.pods} idle pods`, "MiB", runc.perPod.map((p) => p.pssMiB));
    out.runc_shim_pss = entry("  its shim PSS", "MiB", rolePss(runc, "shim"));
    out.runc_pause_pss = entry("  its pause PSS", "MiB", rolePss(runc, "pause"));
    out.runc_container_pss = entry("  its container's processes PSS", "MiB", rolePss(runc, "container"));
    out.runc_pod_rss = entry("runc pod RSS (shim + pause + container)", "MiB", runc.perPod.map((p) => p.rssMiB));
    out.runc_pod_start = entry("runc pod start while the others idle", "ms", runc.startMs);
  }
  return out;
}

function densityResult(d: DensitySample): CriDensityResult {
  return {
    pods: d.perPod.length,
    settleMs: d.settleMs,
    totalPssMiB: d.perPod.reduce((acc, p) => acc + p.pssMiB, 0),
    memAvailableBeforeMiB: d.memAvailableBeforeMiB,
    memAvailableSettledMiB: d.memAvailableSettledMiB,
    memAvailableAfterMiB: d.memAvailableAfterMiB,
  };
}

export function summarizeCri(s: CriSamples): CriResult {
  const start = startSummaries(s);
  const density: CriResult["density"] = {};
  for (const h of HANDLERS) {
    const d = s.density[h];
    if (d) density[h] = densityResult(d);
  }
  return {
    containerdVersion: s.containerdVersion,
    kernel: s.kernel,
    accel: s.accel,
    network: s.network,
    start,
    startRatioOfMedians: start.pod_start_hako!.median / start.pod_start_runc!.median,
    memory: memorySummaries(s),
    density,
    samples: s,
  };
}

export function fmt(x: number, unit: string): string {
  if (!Number.isFinite(x)) return "n/a";
  return unit === "x" ? `${x.toFixed(2)}x` : unit === "MiB" || unit === "MB/s" ? x.toFixed(1) : x.toFixed(0);
}

/** MiB with an explicit sign: "−3679.2", "+179.1". */
function signed(mibValue: number): string {
  return `${mibValue < 0 ? "−" : "+"}${fmt(Math.abs(mibValue), "MiB")}`;
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padStart(n) : s.padEnd(n);
}

export const W = 60;

export function rows(summaries: Summaries): string[] {
  return Object.values(summaries).map(
    (s) => `${pad(s.label, W)}${pad(s.unit, 6)}${pad(fmt(s.median, s.unit), 10, true)}${pad(fmt(s.min, s.unit), 10, true)}${pad(fmt(s.max, s.unit), 10, true)}`,
  );
}

export function header(title: string): string[] {
  return [title, `${pad("metric", W)}${pad("unit", 6)}${pad("median", 10, true)}${pad("min", 10, true)}${pad("max", 10, true)}`, "-".repeat(W + 36)];
}

/** The two tables: pod start, then idle pods' memory. */
export function criTables(r: CriResult): string {
  const hako = r.start.pod_start_hako!.median;
  const runc = r.start.pod_start_runc!.median;
  const start = [
    ...header(`== cri: pod start, containerd ${r.containerdVersion} (CRI, kernel ${r.kernel}, accel ${r.accel}), ${r.start.pod_start_hako!.n} runs ==`),
    ...rows(r.start),
    "-".repeat(W + 36),
    `pod start, medians: hako ${fmt(hako, "ms")} ms / runc ${fmt(runc, "ms")} ms = ${fmt(r.startRatioOfMedians, "x")} (hako − runc = ${fmt(hako - runc, "ms")} ms)`,
  ];
  const d = r.density;
  const podsNote = [d.hako, d.runc].filter((x) => x !== undefined).map((x) => x.pods);
  const mem = [...header(`== cri: host memory of idle pods (${podsNote.join(" / ")} pods, PSS after ${((d.hako ?? d.runc)?.settleMs ?? 0) / 1000} s idle) ==`), ...rows(r.memory), "-".repeat(W + 36)];
  for (const h of HANDLERS) {
    const x = d[h];
    if (!x) continue;
    const change = x.memAvailableSettledMiB - x.memAvailableBeforeMiB;
    mem.push(
      `${h}: ${x.pods} pods, total PSS ${fmt(x.totalPssMiB, "MiB")} MiB; host MemAvailable ${fmt(x.memAvailableBeforeMiB, "MiB")} before → ` +
        `${fmt(x.memAvailableSettledMiB, "MiB")} with the pods (${signed(change)}, ${signed(change / Math.max(x.pods, 1))} per pod) → ${fmt(x.memAvailableAfterMiB, "MiB")} after teardown`,
    );
  }
  const hp = r.memory.hako_pod_pss?.median;
  const rp = r.memory.runc_pod_pss?.median;
  if (hp !== undefined && rp !== undefined) mem.push(`per-pod PSS, medians: hako ${fmt(hp, "MiB")} MiB / runc ${fmt(rp, "MiB")} MiB = ${fmt(hp / rp, "x")}`);
  return `${start.join("\n")}\n\n${mem.join("\n")}`;
}

export function roundSummaries(summaries: Summaries): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(summaries).map(([k, s]) => [k, { label: s.label, unit: s.unit, n: s.n, median: round(s.median, 3), min: round(s.min, 3), max: round(s.max, 3) }]),
  );
}

/** The `cri` key of the results JSON: summaries rounded, raw samples kept. */
export function criJson(r: CriResult): unknown {
  const density = Object.fromEntries(
    Object.entries(r.density).map(([h, x]) => [
      h,
      {
        ...x,
        totalPssMiB: round(x.totalPssMiB, 1),
        memAvailableBeforeMiB: round(x.memAvailableBeforeMiB, 1),
        memAvailableSettledMiB: round(x.memAvailableSettledMiB, 1),
        memAvailableAfterMiB: round(x.memAvailableAfterMiB, 1),
      },
    ]),
  );
  return {
    containerdVersion: r.containerdVersion,
    kernel: r.kernel,
    accel: r.accel,
    network: r.network,
    startRatioOfMedians: round(r.startRatioOfMedians, 3),
    start: roundSummaries(r.start),
    memory: roundSummaries(r.memory),
    density,
    samples: r.samples,
  };
}
