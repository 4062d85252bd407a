// The cri section's summaries, tables and JSON (see bench/lib/cri.ts).
import { CACHE_HANDLER, HANDLERS, TEMPLATE_HANDLER, type CriSamples, type DensitySample, type Handler, type PodStartSample } from "./cri.js";
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

/** One of the targets, judged on this run's medians. */
export interface CriTarget {
  /** What is compared with what, e.g. "hako-template pod start ≤ 0.25 × hako pod start". */
  name: string;
  /** The same in a few words, for the chart's notes ("template ≤ 0.25× cold"). */
  short: string;
  /** The figure the chart notes it under: "pod_start", "pod_pss" or "pod_pss_ksm" (the summary keys' metric). */
  metric: "pod_start" | "pod_pss" | "pod_pss_ksm";
  /** How the value came about ("1980 ms / 4512 ms", "median of 10 pods"). */
  detail: string;
  value: number;
  limit: number;
  unit: "x" | "MiB";
  /** undefined when a figure it needs was not measured (an interrupted run). */
  met: boolean | undefined;
}

export interface CriResult {
  containerdVersion: string;
  kernel: string;
  accel: string;
  network: string;
  templateInitMs: number;
  /** Pod start table. */
  start: Summaries;
  /** Every START_RATIOS pair as median / median, keyed "hako-template/hako". */
  startRatiosOfMedians: Record<string, number>;
  /** Idle pods table. */
  memory: Summaries;
  density: Partial<Record<Handler, CriDensityResult>>;
  targets: CriTarget[];
  samples: CriSamples;
}

/** The pod-start ratios reported, [numerator, denominator]: each hako handler against runc, and templated against cold. */
const START_RATIOS: ReadonlyArray<readonly [Handler, Handler]> = [
  ["hako", "runc"],
  [TEMPLATE_HANDLER, "runc"],
  [TEMPLATE_HANDLER, "hako"],
  [CACHE_HANDLER, "runc"],
  [CACHE_HANDLER, "hako"],
];

/** The issue's limits: a templated pod starts in a quarter of a cold one's time and within 3 × runc's; idle pods' host PSS. */
const TEMPLATE_START_VS_COLD = 0.25;
/** Cold pod start ≤ this × (floor + agent start) of the boot section (same kernel, same run). */
const COLD_START_VS_BOOT = 1.25;
const TEMPLATE_START_VS_RUNC = 3;
/** The PSS limits, in MB (10^6 bytes); PSS is read in KiB, so they are judged in MiB: 85.8 and 143.1. */
const TEMPLATE_PSS_MB = 90;
const COLD_PSS_MB = 150;
const mib = (mb: number): number => (mb * 1e6) / 2 ** 20;
/** "90 MB (85.8 MiB)" */
const limitText = (mb: number): string => `${mb} MB (${mib(mb).toFixed(1)} MiB)`;

/** One value per handler, typed so that adding a handler makes every such table say what it holds. */
function perHandler<T>(f: (h: Handler) => T): Record<Handler, T> {
  return { hako: f("hako"), "hako-template": f("hako-template"), "hako-cache": f("hako-cache"), runc: f("runc") };
}

export function entry(label: string, unit: Unit, values: readonly number[]): LabelledSummary {
  return { ...summarize(values), label, unit };
}

/** Run i's a ÷ run i's b, for the runs both have. */
function pairedRatios(a: readonly number[], b: readonly number[]): number[] {
  return a.slice(0, b.length).map((x, i) => x / b[i]!);
}

function startSummaries(s: CriSamples): Summaries {
  const out: Summaries = {};
  const phase = (key: keyof PodStartSample): Record<Handler, number[]> => perHandler((h) => s.podStart[h].map((x) => x[key]));
  const total = phase("totalMs");
  for (const h of HANDLERS) out[`pod_start_${h}`] = entry(`${h}: pod start (RunPodSandbox → "started" logged)`, "ms", total[h]);
  // Paired: the handlers' starts of one run follow each other, so they share that moment's host load.
  for (const [a, b] of START_RATIOS) out[`ratio_${a}_${b}`] = entry(`ratio ${a} / ${b} (paired)`, "x", pairedRatios(total[a], total[b]));
  // The boot section's baseline again, measured in each run just before its cold pod.
  if (s.bootPair.length > 0) {
    const agentReady = s.bootPair.map((b) => b.agentReadyMs);
    out.boot_floor = entry("beside the pods: floor (bare QEMU boot to init)", "ms", s.bootPair.map((b) => b.floorMs));
    out.boot_agent_ready = entry("beside the pods: floor + agent start (QEMU spawn → agent ready)", "ms", agentReady);
    out.ratio_hako_boot = entry("ratio hako (cold) / (floor + agent start) (paired)", "x", pairedRatios(total.hako, agentReady));
  }
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
function rolePss(d: DensitySample, role: "qemu" | "shim" | "pause" | "container", part: "pssMiB" | "pssAnonMiB" = "pssMiB", perPod = d.perPod): number[] {
  const named = ["qemu", "shim", "pause"];
  return perPod.map((p) =>
    p.processes.filter((m) => (role === "container" ? !named.includes(m.role) : m.role === role)).reduce((acc, m) => acc + m[part], 0),
  );
}

function memorySummaries(s: CriSamples): Summaries {
  const out: Summaries = {};
  for (const h of HANDLERS) {
    const d = s.density[h];
    if (!d || h === "runc") continue;
    // A clone's Pss_Anon is the guest RAM it wrote since the restore; the template's pages it only read are shared.
    out[`${h}_pod_pss`] = entry(`${h} pod PSS (shim + QEMU), ${d.pods} idle pods`, "MiB", d.perPod.map((p) => p.pssMiB));
    out[`${h}_qemu_pss`] = entry("  its QEMU PSS", "MiB", rolePss(d, "qemu"));
    out[`${h}_qemu_pss_anon`] = entry("    of which anonymous (Pss_Anon: guest RAM, TCG cache)", "MiB", rolePss(d, "qemu", "pssAnonMiB"));
    out[`${h}_shim_pss`] = entry("  its shim PSS", "MiB", rolePss(d, "shim"));
    out[`${h}_pod_rss`] = entry(`${h} pod RSS (shim + QEMU)`, "MiB", d.perPod.map((p) => p.rssMiB));
    if (d.ksm) {
      const how = d.ksm.settled ? `settled in ${(d.ksm.waitedMs / 1000).toFixed(0)} s` : "NOT settled";
      out[`${h}_pod_pss_ksm`] = entry(`${h} pod PSS with KSM (${how})`, "MiB", d.ksm.perPod.map((p) => p.pssMiB));
      out[`${h}_qemu_pss_ksm`] = entry("  its QEMU PSS with KSM", "MiB", rolePss(d, "qemu", "pssMiB", d.ksm.perPod));
    }
    out[`${h}_pod_start`] = entry(`${h} pod start while the others idle`, "ms", d.startMs);
  }
  const runc = s.density.runc;
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

/** A summary's median, NaN when the table lacks it (that handler was not measured). */
const medianOf = (t: Summaries, key: string): number => t[key]?.median ?? NaN;

function target(name: string, short: string, metric: CriTarget["metric"], detail: string, value: number, limit: number, unit: CriTarget["unit"]): CriTarget {
  return { name, short, metric, detail, value, limit, unit, met: Number.isFinite(value) ? value <= limit : undefined };
}

/** The PSS target again with KSM settled (Kata's way of measuring its published per-pod PSS); none if KSM was not measured. */
function ksmTarget(pss: LabelledSummary | undefined, name: string, short: string, limit: number): CriTarget[] {
  return pss ? [target(name, short, "pod_pss_ksm", `median of ${pss.n} pods`, pss.median, limit, "MiB")] : [];
}

/** The targets, from the medians (as the boot section's verdict): the paired ratios are in the table above them. */
function targets(start: Summaries, memory: Summaries, boot: BootReady | undefined): CriTarget[] {
  const cold = medianOf(start, "pod_start_hako");
  const runc = medianOf(start, "pod_start_runc");
  const ms = (x: number): string => `${fmt(x, "ms")} ms`;
  const coldPss = memory.hako_pod_pss;
  const pods = (x: LabelledSummary | undefined): string => `median of ${x?.n ?? 0} pods`;
  // The template targets, judged for pods restored from a template and for pods taken from the VM cache.
  const templated = [TEMPLATE_HANDLER, CACHE_HANDLER].flatMap((h) => {
    const tpl = medianOf(start, `pod_start_${h}`);
    const pss = memory[`${h}_pod_pss`];
    const short = h === CACHE_HANDLER ? "cache" : "template";
    return [
      target(`${h} pod start ≤ ${TEMPLATE_START_VS_COLD} × hako (cold) pod start`, `${short} ≤ ${TEMPLATE_START_VS_COLD}× cold`, "pod_start", `${ms(tpl)} / ${ms(cold)}`, tpl / cold, TEMPLATE_START_VS_COLD, "x"),
      target(`${h} pod start ≤ ${TEMPLATE_START_VS_RUNC} × runc pod start`, `${short} ≤ ${TEMPLATE_START_VS_RUNC}× runc`, "pod_start", `${ms(tpl)} / ${ms(runc)}`, tpl / runc, TEMPLATE_START_VS_RUNC, "x"),
      target(`${h} PSS per idle pod (QEMU + shim) ≤ ${limitText(TEMPLATE_PSS_MB)}`, `${short} ≤ ${limitText(TEMPLATE_PSS_MB)}`, "pod_pss", pods(pss), pss?.median ?? NaN, mib(TEMPLATE_PSS_MB), "MiB"),
      ...ksmTarget(memory[`${h}_pod_pss_ksm`], `${h} PSS per idle pod (QEMU + shim), KSM settled, ≤ ${limitText(TEMPLATE_PSS_MB)}`, `${short} + KSM ≤ ${limitText(TEMPLATE_PSS_MB)}`, mib(TEMPLATE_PSS_MB)),
    ];
  });
  return [
    ...templated,
    target(
      `hako (cold) pod start ≤ ${COLD_START_VS_BOOT} × (floor + agent start) of the boot section`,
      `cold ≤ ${COLD_START_VS_BOOT}× (floor + agent)`,
      "pod_start",
      boot ? `${ms(cold)} / (${ms(boot.floorMs)} + ${ms(boot.agentStartMs)}); hako trace <pod> shows the phases` : "boot section not run",
      boot ? cold / (boot.floorMs + boot.agentStartMs) : NaN,
      COLD_START_VS_BOOT,
      "x",
    ),
    target(
      `hako (cold) pod start ≤ ${COLD_START_VS_BOOT} × (floor + agent start) measured beside it (paired, per run)`,
      `cold ≤ ${COLD_START_VS_BOOT}× (floor + agent), paired`,
      "pod_start",
      start.ratio_hako_boot
        ? `median of ${start.ratio_hako_boot.n} runs' ratios; medians ${ms(cold)} / ${ms(medianOf(start, "boot_agent_ready"))}`
        : "no boot pair measured",
      medianOf(start, "ratio_hako_boot"),
      COLD_START_VS_BOOT,
      "x",
    ),
    target(`hako (cold) PSS per idle pod (QEMU + shim) ≤ ${limitText(COLD_PSS_MB)}`, `cold ≤ ${limitText(COLD_PSS_MB)}`, "pod_pss", pods(coldPss), coldPss?.median ?? NaN, mib(COLD_PSS_MB), "MiB"),
    ...ksmTarget(memory.hako_pod_pss_ksm, `hako (cold) PSS per idle pod (QEMU + shim), KSM settled, ≤ ${limitText(COLD_PSS_MB)}`, `cold + KSM ≤ ${limitText(COLD_PSS_MB)}`, mib(COLD_PSS_MB)),
  ];
}

/** The boot section's medians for the cri section's kernel: bare QEMU boot-to-init, and agent start after it. */
export interface BootReady {
  floorMs: number;
  agentStartMs: number;
}

export function summarizeCri(s: CriSamples, boot?: BootReady): CriResult {
  const start = startSummaries(s);
  const memory = memorySummaries(s);
  const density: CriResult["density"] = {};
  for (const h of HANDLERS) {
    const d = s.density[h];
    if (d) density[h] = densityResult(d);
  }
  const startRatiosOfMedians = Object.fromEntries(START_RATIOS.map(([a, b]) => [`${a}/${b}`, medianOf(start, `pod_start_${a}`) / medianOf(start, `pod_start_${b}`)]));
  return {
    containerdVersion: s.containerdVersion,
    kernel: s.kernel,
    accel: s.accel,
    network: s.network,
    templateInitMs: s.templateInitMs,
    start,
    startRatiosOfMedians,
    memory,
    density,
    targets: targets(start, memory, boot),
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

/** "met", "NOT MET", or why there is no verdict. */
function verdict(t: CriTarget): string {
  return t.met === undefined ? "not measured" : t.met ? "met" : "NOT MET";
}

/** The targets block: each target with its measured value, its limit and the verdict. */
function targetLines(r: CriResult): string[] {
  const width = Math.max(...r.targets.map((t) => t.name.length));
  return [
    "== cri: targets (medians of this run) ==",
    ...r.targets.map((t) => {
      const shown = !Number.isFinite(t.value) ? "n/a" : t.unit === "x" ? fmt(t.value, "x") : `${fmt(t.value, "MiB")} MiB`;
      const value = `${t.detail} = ${shown}`;
      const limit = t.unit === "x" ? `${t.limit}x` : `${t.limit.toFixed(1)} MiB`;
      return `${pad(t.name, width)}  ${pad(value, 28, true)}  limit ${pad(limit, 7)}  ${verdict(t)}`;
    }),
  ];
}

/** The tables: pod start, idle pods' memory, then the targets. */
export function criTables(r: CriResult): string {
  const startLines = START_RATIOS.map(([a, b]) => {
    const [x, y] = [medianOf(r.start, `pod_start_${a}`), medianOf(r.start, `pod_start_${b}`)];
    return `pod start, medians: ${a} ${fmt(x, "ms")} ms / ${b} ${fmt(y, "ms")} ms = ${fmt(x / y, "x")} (${a} − ${b} = ${fmt(x - y, "ms")} ms)`;
  });
  const start = [
    ...header(`== cri: pod start, containerd ${r.containerdVersion} (CRI, kernel ${r.kernel}, accel ${r.accel}), ${r.start.pod_start_hako?.n ?? 0} runs ==`),
    ...rows(r.start),
    "-".repeat(W + 36),
    ...startLines,
    `${TEMPLATE_HANDLER}: its templates were built first (hako factory init, not part of any pod start): ${fmt(r.templateInitMs, "ms")} ms`,
    `${CACHE_HANDLER}: the same templates; hako factory cache kept warm VMs, full again before each ${CACHE_HANDLER} start and after its teardown` +
      (r.samples.vmCacheIdle ? `; its ${r.samples.vmCacheIdle.vms} idle VMs' PSS: ${fmt(r.samples.vmCacheIdle.pssMiB, "MiB")} MiB` : ""),
  ];
  const d = r.density;
  const measured = HANDLERS.flatMap((h) => (d[h] ? [d[h]] : []));
  const podsNote = measured.map((x) => x.pods);
  const mem = [...header(`== cri: host memory of idle pods (${podsNote.join(" / ")} pods, PSS after ${(measured[0]?.settleMs ?? 0) / 1000} s idle) ==`), ...rows(r.memory), "-".repeat(W + 36)];
  for (const h of HANDLERS) {
    const x = d[h];
    if (!x) continue;
    const change = x.memAvailableSettledMiB - x.memAvailableBeforeMiB;
    mem.push(
      `${h}: ${x.pods} pods, total PSS ${fmt(x.totalPssMiB, "MiB")} MiB; host MemAvailable ${fmt(x.memAvailableBeforeMiB, "MiB")} before → ` +
        `${fmt(x.memAvailableSettledMiB, "MiB")} with the pods (${signed(change)}, ${signed(change / Math.max(x.pods, 1))} per pod) → ${fmt(x.memAvailableAfterMiB, "MiB")} after teardown`,
    );
  }
  // The same pairs as the pod start's, as far as both handlers had idle pods.
  for (const [a, b] of START_RATIOS) {
    const [x, y] = [r.memory[`${a}_pod_pss`]?.median, r.memory[`${b}_pod_pss`]?.median];
    if (x !== undefined && y !== undefined) mem.push(`per-pod PSS, medians: ${a} ${fmt(x, "MiB")} MiB / ${b} ${fmt(y, "MiB")} MiB = ${fmt(x / y, "x")}`);
  }
  return `${start.join("\n")}\n\n${mem.join("\n")}\n\n${targetLines(r).join("\n")}`;
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
    templateInitMs: Math.round(r.templateInitMs),
    // Kept for readers of earlier result files: the same as startRatiosOfMedians["hako/runc"].
    startRatioOfMedians: round(r.startRatiosOfMedians["hako/runc"] ?? NaN, 3),
    startRatiosOfMedians: Object.fromEntries(Object.entries(r.startRatiosOfMedians).map(([k, v]) => [k, round(v, 3)])),
    start: roundSummaries(r.start),
    memory: roundSummaries(r.memory),
    density,
    // JSON.stringify drops an undefined field: null says "not measured" explicitly.
    targets: r.targets.map((t) => ({ ...t, value: round(t.value, 3), met: t.met ?? null })),
    samples: r.samples,
  };
}
