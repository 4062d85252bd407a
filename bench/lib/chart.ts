// An SVG chart of a bench run: one small panel per compared figure (hako
// against its baseline), bars = medians, whiskers = min–max, the ratio to the
// baseline next to each other bar. The figures differ in unit and scale
// (seconds of boot, MiB of PSS), so each panel has its own axis.
//
// Two halves: `chartFigures` reads the results JSON the bench writes (as
// parsed JSON, so that an old file re-renders the same way as a fresh run) into
// a neutral `ChartFigure[]`; `renderChartSvg` draws any such list. Sections the
// extractor does not know (e.g. a future `io`) are still charted when their
// summaries follow the bench's key convention: the runtime handler is one `_`
// part of the key (`pod_start_hako`, `hako_pod_pss`, `seq_read_runc`).
import { xmlEscape } from "../../src/runtime/trace.js";

export interface ChartBar {
  label: string;
  median: number;
  min: number;
  max: number;
  /** The bar the others are divided by; at most one per figure. */
  baseline?: boolean;
}

export interface ChartFigure {
  title: string;
  unit: string;
  /** One line under the title: what was measured, how many samples. */
  note?: string;
  /** Targets this figure is judged by, one line under the note ("template ≤ 3× runc: 16.7×", met or not). */
  targets?: ChartTarget[];
  bars: ChartBar[];
}

export interface ChartTarget {
  text: string;
  /** undefined: not measured in this run. */
  met: boolean | undefined;
}

export interface ChartHeading {
  title: string;
  subtitle?: string;
}

// ---------------------------------------------------------------------------
// Extraction from the results JSON

type JsonObject = Record<string, unknown>;

const isObject = (x: unknown): x is JsonObject => typeof x === "object" && x !== null && !Array.isArray(x);
const isFiniteNumber = (x: unknown): x is number => typeof x === "number" && Number.isFinite(x);
const text = (x: unknown): string => (typeof x === "string" ? x : "");

/** One entry of a `summary`/`start`/`memory` table as the JSON holds it. */
interface JsonSummary {
  label: string;
  unit: string;
  n: number;
  median: number;
  min: number;
  max: number;
}

/** A summary with a usable median, or undefined: a metric without samples is written as `null` (JSON has no NaN). */
function asSummary(x: unknown): JsonSummary | undefined {
  if (!isObject(x) || !isFiniteNumber(x.median)) return undefined;
  const median = x.median;
  return {
    label: text(x.label),
    unit: text(x.unit),
    n: isFiniteNumber(x.n) ? x.n : 0,
    median,
    min: isFiniteNumber(x.min) ? x.min : median,
    max: isFiniteNumber(x.max) ? x.max : median,
  };
}

/** The usable summaries of a table, in the table's order. */
function summariesIn(x: unknown): Map<string, JsonSummary> {
  const out = new Map<string, JsonSummary>();
  if (!isObject(x)) return out;
  for (const [key, value] of Object.entries(x)) {
    const s = asSummary(value);
    if (s) out.set(key, s);
  }
  return out;
}

function bar(label: string, s: JsonSummary, baseline = false): ChartBar {
  return { label, median: s.median, min: s.min, max: s.max, ...(baseline ? { baseline: true } : {}) };
}

/** Every comparison in the bench is against runc, except the boot section's (against bare QEMU). */
const BASELINE_HANDLER = "runc";
const isHandlerPart = (part: string): boolean => part === BASELINE_HANDLER || part.startsWith("hako");

interface HandlerSummary {
  handler: string;
  summary: JsonSummary;
}

/**
 * Groups a table's keys that differ only in their handler part: `pod_start_hako`
 * and `pod_start_runc` both go under `pod_start_*`. Keys naming no handler, or
 * two (the paired ratios `ratio_hako_runc`), are left out.
 */
function handlerGroups(table: Map<string, JsonSummary>): Map<string, HandlerSummary[]> {
  const groups = new Map<string, HandlerSummary[]>();
  for (const [key, summary] of table) {
    const parts = key.split("_");
    const at = parts.filter(isHandlerPart);
    if (at.length !== 1) continue;
    const handler = at[0]!;
    const metric = parts.map((p) => (p === handler ? "*" : p)).join("_");
    groups.set(metric, [...(groups.get(metric) ?? []), { handler, summary }]);
  }
  return groups;
}

/** The bars of a handler group, the baseline last; undefined when there is nothing to compare. */
function handlerBars(group: readonly HandlerSummary[] | undefined): ChartBar[] | undefined {
  if (!group || group.length < 2) return undefined;
  const others = group.filter((g) => g.handler !== BASELINE_HANDLER).map((g) => bar(g.handler, g.summary));
  const baseline = group.filter((g) => g.handler === BASELINE_HANDLER).map((g) => bar(g.handler, g.summary, true));
  return [...others, ...baseline];
}

/** "hako vs runc", or "hako / hako-template / runc" for three and more. */
function versus(bars: readonly ChartBar[]): string {
  return bars.map((b) => b.label).join(bars.length === 2 ? " vs " : " / ");
}

function samplesNote(bars: readonly ChartBar[], group: readonly HandlerSummary[] | undefined, what: string): string {
  const ns = [...new Set((group ?? []).map((g) => g.summary.n))];
  const n = ns.length === 1 ? `${ns[0]}` : ns.join("/");
  return bars.some((b) => b.max > b.min) ? `median of ${n} ${what}, whiskers min–max` : `${n} ${what}`;
}

function handlerFigure(title: string, unit: string, group: readonly HandlerSummary[] | undefined, note: (bars: ChartBar[]) => string): ChartFigure | undefined {
  const bars = handlerBars(group);
  if (!bars) return undefined;
  return { title: `${title}: ${versus(bars)}`, unit, note: note(bars), bars };
}

const joinNote = (...parts: string[]): string => parts.filter((p) => p !== "").join("; ");

/** "kernel generic, accel tcg" from a section's own fields. */
function where(section: JsonObject): string {
  return [section.kernel ? `kernel ${text(section.kernel)}` : "", section.accel ? `accel ${text(section.accel)}` : ""].filter((x) => x !== "").join(", ");
}

/** Boot section: per kernel, `hako run /bin/true` against floor + agent start (= QEMU spawn → agent ready), the issue's target. */
function bootFigures(kernels: unknown): ChartFigure[] {
  if (!Array.isArray(kernels)) return [];
  const out: ChartFigure[] = [];
  for (const k of kernels) {
    if (!isObject(k)) continue;
    const table = summariesIn(k.summary);
    const run = table.get("run");
    const agentReady = table.get("agent_ready");
    if (!run || !agentReady) continue;
    const floor = table.get("floor");
    const target = isObject(k.target) && isFiniteNumber(k.target.limit) ? `; target ≤ ${k.target.limit}×` : "";
    out.push({
      title: `hako run /bin/true vs floor + agent start (${where(k)})`,
      unit: "ms",
      note: `median of ${run.n} runs, whiskers min–max${floor ? `; floor (QEMU boot to init) ${formatNumber(floor.median)} ms` : ""}${target}`,
      bars: [bar("hako run /bin/true", run), bar("floor + agent start", agentReady, true)],
    });
  }
  return out;
}

/** Containerd section: `ctr run --rm` hako against runc, and the shims' PSS with one container running. */
function containerdFigures(section: unknown): ChartFigure[] {
  if (!isObject(section)) return [];
  const table = summariesIn(section.summary);
  const out: ChartFigure[] = [];
  const run = handlerGroups(table).get("ctr_run_*");
  const ctr = handlerFigure("ctr run --rm /bin/true", "ms", run, (bars) => joinNote(samplesNote(bars, run, "runs"), where(section)));
  if (ctr) out.push(ctr);
  // The hako shim's key names no handler (`shim_pss`), hence no grouping here.
  const hakoShim = table.get("shim_pss");
  const runcShim = table.get("runc_shim_pss");
  if (hakoShim && runcShim) {
    out.push({
      title: "containerd shim PSS, 1 container running: hako vs runc",
      unit: "MiB",
      note: "the shim process only (hako's QEMU is not in it); 1 sample each",
      bars: [bar("hako", hakoShim), bar("runc", runcShim, true)],
    });
  }
  return out;
}

/** The cri section's targets (`cri.targets`) judged on the figure of `metric`: "template ≤ 3× runc: 16.7×". */
function criTargets(section: JsonObject, metric: string): ChartTarget[] {
  const targets = Array.isArray(section.targets) ? section.targets.filter(isObject) : [];
  return targets
    .filter((t) => t.metric === metric && text(t.short) !== "")
    .map((t) => {
      const value = isFiniteNumber(t.value) ? (t.unit === "x" ? formatRatio(t.value) : `${formatNumber(t.value)} ${text(t.unit)}`) : "n/a";
      return { text: `${text(t.short)}: ${value}`, met: typeof t.met === "boolean" ? t.met : undefined };
    });
}

/** The figure with its targets, when it has any. */
function withTargets(f: ChartFigure | undefined, targets: ChartTarget[]): ChartFigure | undefined {
  return f && targets.length > 0 ? { ...f, targets } : f;
}

/** Cri section: pod start, and per idle pod its PSS and the start of one more pod, for every handler the run had. */
function criFigures(section: unknown): ChartFigure[] {
  if (!isObject(section)) return [];
  const start = handlerGroups(summariesIn(section.start));
  const memory = handlerGroups(summariesIn(section.memory));
  const density = isObject(section.density) ? section.density : {};
  const pods = [...new Set(Object.values(density).flatMap((d) => (isObject(d) && isFiniteNumber(d.pods) ? [d.pods] : [])))];
  const idle = pods.length > 0 ? `${pods.join("/")} idle pods per runtime` : "idle pods";
  const podStart = start.get("pod_start_*");
  const podPss = memory.get("*_pod_pss");
  const podPssKsm = memory.get("*_pod_pss_ksm");
  const loadedStart = memory.get("*_pod_start");
  // Every handler but runc runs its pods in VMs (hako, hako-template).
  const vmHandlers = (bars: readonly ChartBar[]): string => bars.filter((b) => !b.baseline).map((b) => b.label).join(", ");
  return [
    withTargets(
      handlerFigure("CRI pod start (RunPodSandbox → container's first log line)", "ms", podStart, (bars) => joinNote(samplesNote(bars, podStart, "runs"), where(section))),
      criTargets(section, "pod_start"),
    ),
    withTargets(
      handlerFigure("PSS per idle pod", "MiB", podPss, (bars) => `${idle}; ${vmHandlers(bars)}: shim + QEMU, runc: shim + pause + container; ${samplesNote(bars, podPss, "pods")}`),
      criTargets(section, "pod_pss"),
    ),
    withTargets(
      handlerFigure("PSS per idle pod, KSM settled", "MiB", podPssKsm, (bars) => `the same idle pods after ksmd merged identical guest pages; ${samplesNote(bars, podPssKsm, "pods")}`),
      criTargets(section, "pod_pss_ksm"),
    ),
    handlerFigure("CRI pod start while the other pods idle", "ms", loadedStart, (bars) => `${idle}; ${samplesNote(bars, loadedStart, "pods")}`),
  ].filter((f): f is ChartFigure => f !== undefined);
}

/** "hako: seq read" → "seq read": the title names the handlers already. */
function withoutHandler(label: string, handler: string): string {
  return label.startsWith(`${handler}: `) ? label.slice(handler.length + 2) : label;
}

/** A section the extractor does not know: one figure per handler group of each of its summary tables. */
function otherSectionFigures(name: string, section: JsonObject): ChartFigure[] {
  const tables = [section, ...Object.values(section)].filter(isObject);
  const out: ChartFigure[] = [];
  for (const table of tables) {
    for (const group of handlerGroups(summariesIn(table)).values()) {
      const first = group[0]!;
      const unit = first.summary.unit;
      // A ratio is not a figure of its own, and bars of different units share no scale.
      if (unit === "x" || group.some((g) => g.summary.unit !== unit)) continue;
      const title = `${name}: ${withoutHandler(first.summary.label, first.handler)}`;
      const figure = handlerFigure(title, unit, group, (bars) => samplesNote(bars, group, "samples"));
      if (figure) out.push(figure);
    }
  }
  return out;
}

/** Top-level keys that are run metadata or sections read above. */
const NOT_OTHER_SECTIONS = new Set(["host", "sectionMs", "kernels", "containerd", "cri"]);

/** The figures of a results document (parsed `bench/results/*.json`); absent or partial sections give fewer figures, never an error. */
export function chartFigures(results: unknown): ChartFigure[] {
  if (!isObject(results)) return [];
  const others = Object.entries(results).filter(([key, value]) => !NOT_OTHER_SECTIONS.has(key) && isObject(value));
  return [
    ...bootFigures(results.kernels),
    ...containerdFigures(results.containerd),
    ...criFigures(results.cri),
    ...others.flatMap(([key, value]) => otherSectionFigures(key, value as JsonObject)),
  ];
}

/** Title and one line of context (host, accelerator, runs) from the document's metadata. */
export function chartHeading(results: unknown): ChartHeading {
  if (!isObject(results)) return { title: "hako bench" };
  const host = isObject(results.host) ? results.host : {};
  const sections = [results.containerd, results.cri, ...(Array.isArray(results.kernels) ? results.kernels : [])].filter(isObject);
  const accel = sections.map((s) => text(s.accel)).find((a) => a !== "");
  const parts = [
    isFiniteNumber(host.cpus) ? `${host.cpus} × ${text(host.cpu) || "CPU"}` : "",
    accel ? `accel ${accel}` : "",
    isFiniteNumber(results.runs) ? `${results.runs} runs + ${isFiniteNumber(results.warmup) ? results.warmup : 0} warm-up` : "",
    text(host.qemu),
    text(host.node) ? `node ${text(host.node)}` : "",
  ];
  const startedAt = text(results.startedAt);
  return { title: `hako bench${startedAt ? `, ${startedAt}` : ""}`, subtitle: parts.filter((p) => p !== "").join(" · ") };
}

/** The SVG of a parsed results document: what bench/run.ts writes and bench/chart.ts re-renders. */
export function chartSvgFromResults(results: unknown): string {
  return renderChartSvg(chartFigures(results), chartHeading(results));
}

// ---------------------------------------------------------------------------
// Rendering

const WIDTH = 960;
const MARGIN = 16;
/** Room right of the plot for "4789 ms  39.6× baseline". */
const VALUE_W = 230;
const ROW_H = 26;
const BAR_H = 16;
const PANEL_GAP = 14;
/** Width of a character at font-size 12 in a generic sans-serif, generously: no font is embedded, so text is measured by estimate. */
const CHAR_W = 7;
const BASELINE_FILL = "#9a9a9a";
const FILLS = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#e15759", "#76b7b2"];

/** XML 1.0 does not allow most control characters even escaped; labels come from a JSON file. */
function esc(s: string): string {
  return xmlEscape(s.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, ""));
}

/** Numbers as the tables print them: whole above 100, one decimal above 10, two below. */
export function formatNumber(x: number): string {
  const a = Math.abs(x);
  return x.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : 2);
}

function formatRatio(r: number): string {
  return `${r >= 10 ? r.toFixed(1) : r.toFixed(2)}×`;
}

function truncate(s: string, chars: number): string {
  return s.length <= chars ? s : `${s.slice(0, Math.max(1, chars - 1))}…`;
}

/** An axis from 0 to a round number at or above `max`, in 1/2/2.5/5 × 10^k steps, about five of them. */
export function niceAxis(max: number): { top: number; step: number } {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const raw = max / 5;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const f = raw / magnitude;
  const step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * magnitude;
  return { top: Math.ceil(max / step - 1e-9) * step, step };
}

/** A tick value with as many decimals as the step has (250 → "750", 2.5 → "7.5"). */
function tickText(v: number, step: number): string {
  let decimals = 0;
  while (decimals < 6 && Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-6) decimals++;
  return v.toFixed(decimals);
}

interface Layout {
  labelW: number;
  plotX: number;
  plotW: number;
}

function layoutFor(figures: readonly ChartFigure[]): Layout {
  // One label column for all panels, so that their plots line up.
  const longest = Math.max(0, ...figures.flatMap((f) => f.bars.map((b) => b.label.length)));
  const labelW = Math.min(260, Math.max(80, longest * CHAR_W + 12));
  const plotX = MARGIN + labelW;
  return { labelW, plotX, plotW: WIDTH - plotX - VALUE_W - MARGIN };
}

/** Panel-relative y of the note's baseline, and of the targets' (below the note when there is one). */
const NOTE_Y = 32;
function targetsY(f: ChartFigure): number {
  return f.note ? 46 : 32;
}

/** Panel-relative y of the first bar row: below the title, the note and the targets line, as far as there are. */
function barsTopOf(f: ChartFigure): number {
  return 26 + (f.note ? 14 : 0) + (f.targets && f.targets.length > 0 ? 14 : 0);
}

const TARGET_FILL = { met: "#2e7d32", missed: "#c62828", unknown: "#777" };

/** "targets: a: 0.44× NOT met  b: 16.7× NOT met", each coloured by its verdict. */
function renderTargets(f: ChartFigure): string {
  const parts = (f.targets ?? []).map((t, i) => {
    const [fill, word] = t.met === undefined ? [TARGET_FILL.unknown, "not measured"] : t.met ? [TARGET_FILL.met, "met"] : [TARGET_FILL.missed, "NOT met"];
    // dx, not spaces: SVG collapses the space between the text and its tspans.
    return `<tspan fill="${fill}" dx="${i > 0 ? 10 : 6}">${esc(`${t.text} ${word}`)}</tspan>`;
  });
  return `<text class="targets" x="${MARGIN}" y="${targetsY(f)}" font-size="11" fill="#555">targets:${parts.join("")}</text>`;
}

function panelHeight(f: ChartFigure): number {
  return barsTopOf(f) + f.bars.length * ROW_H + 26;
}

/** Bars drawn: finite medians only (a figure with a NaN would have no length). */
function drawable(f: ChartFigure): ChartFigure {
  return { ...f, bars: f.bars.filter((b) => Number.isFinite(b.median)) };
}

function renderPanel(f: ChartFigure, y: number, layout: Layout): string {
  const { labelW, plotX, plotW } = layout;
  const extent = (b: ChartBar): number => Math.max(b.median, Number.isFinite(b.max) ? b.max : b.median);
  const axis = niceAxis(Math.max(0, ...f.bars.map(extent)));
  const xOf = (v: number): number => plotX + (Math.max(0, Math.min(v, axis.top)) / axis.top) * plotW;
  const barsTop = barsTopOf(f);
  const barsBottom = barsTop + f.bars.length * ROW_H;
  const baseline = f.bars.find((b) => b.baseline);
  const out: string[] = [
    `<g class="panel" transform="translate(0 ${y})">`,
    `<rect x="${MARGIN / 2}" y="0" width="${WIDTH - MARGIN}" height="${panelHeight(f)}" rx="4" fill="#f8f8f8" stroke="#e0e0e0"/>`,
    `<text x="${MARGIN}" y="17" font-size="13" font-weight="bold">${esc(truncate(f.title, Math.floor((WIDTH - 2 * MARGIN) / 7.5)))}</text>`,
  ];
  if (f.note) out.push(`<text x="${MARGIN}" y="${NOTE_Y}" font-size="11" fill="#555">${esc(truncate(f.note, Math.floor((WIDTH - 2 * MARGIN) / 6.2)))}</text>`);
  if (f.targets && f.targets.length > 0) out.push(renderTargets(f));
  const ticks = Math.round(axis.top / axis.step);
  for (let t = 0; t <= ticks; t++) {
    const v = t * axis.step;
    const x = xOf(v).toFixed(1);
    const last = t === ticks;
    out.push(`<line x1="${x}" y1="${barsTop - 2}" x2="${x}" y2="${barsBottom + 2}" stroke="${v === 0 ? "#888" : "#ddd"}"/>`);
    const label = tickText(v, axis.step);
    out.push(`<text x="${x}" y="${barsBottom + 16}" font-size="10" fill="#555" text-anchor="middle">${esc(label)}</text>`);
    // The unit after the last number, so that the number itself stays centred on its tick.
    if (last) out.push(`<text x="${(xOf(v) + label.length * 3 + 4).toFixed(1)}" y="${barsBottom + 16}" font-size="10" fill="#555">${esc(f.unit)}</text>`);
  }
  let colour = 0;
  f.bars.forEach((b, i) => {
    const rowY = barsTop + i * ROW_H;
    const mid = rowY + ROW_H / 2;
    const fill = b.baseline ? BASELINE_FILL : FILLS[colour++ % FILLS.length]!;
    const x1 = xOf(b.median);
    out.push(`<text x="${plotX - 8}" y="${mid + 4}" text-anchor="end">${esc(truncate(b.label, Math.floor((labelW - 12) / CHAR_W)))}</text>`);
    out.push(`<rect class="bar" x="${plotX}" y="${mid - BAR_H / 2}" width="${Math.max(1, x1 - plotX).toFixed(1)}" height="${BAR_H}" fill="${fill}"/>`);
    // A single sample, or identical ones, has no spread to show.
    if (Number.isFinite(b.min) && Number.isFinite(b.max) && b.max > b.min) {
      const [wl, wr] = [xOf(b.min).toFixed(1), xOf(b.max).toFixed(1)];
      out.push(
        `<g class="whisker" stroke="#222" stroke-width="1.5">` +
          `<line x1="${wl}" y1="${mid}" x2="${wr}" y2="${mid}"/>` +
          `<line x1="${wl}" y1="${mid - 5}" x2="${wl}" y2="${mid + 5}"/>` +
          `<line x1="${wr}" y1="${mid - 5}" x2="${wr}" y2="${mid + 5}"/></g>`,
      );
    }
    const valueX = (Math.max(x1, Number.isFinite(b.max) ? xOf(b.max) : x1) + 6).toFixed(1);
    const value = `${formatNumber(b.median)} ${f.unit}`;
    // dx, not a leading space: SVG collapses the space between the text and its tspan.
    const ratio =
      b.baseline
        ? `<tspan fill="#777" font-style="italic" dx="6">(baseline)</tspan>`
        : baseline && baseline.median > 0
          ? `<tspan class="ratio" font-weight="bold" dx="8">${esc(formatRatio(b.median / baseline.median))} baseline</tspan>`
          : "";
    out.push(`<text x="${valueX}" y="${mid + 4}">${esc(value)}${ratio}</text>`);
  });
  out.push("</g>");
  return out.join("\n");
}

/** A self-contained SVG (no fonts, scripts or links): heading, then the panels stacked vertically. */
export function renderChartSvg(figures: readonly ChartFigure[], heading: ChartHeading = { title: "hako bench" }): string {
  const shown = figures.map(drawable).filter((f) => f.bars.length > 0);
  const layout = layoutFor(shown);
  const headH = heading.subtitle ? 50 : 34;
  const panels: string[] = [];
  let y = headH;
  for (const f of shown) {
    panels.push(renderPanel(f, y, layout));
    y += panelHeight(f) + PANEL_GAP;
  }
  if (shown.length === 0) {
    panels.push(`<text x="${MARGIN}" y="${y + 16}" fill="#555">no figures in this run</text>`);
    y += 30;
  }
  const height = Math.ceil(y + MARGIN - (shown.length > 0 ? PANEL_GAP : 0));
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif" font-size="12">`,
    `<title>${esc(heading.title)}</title>`,
    `<rect width="${WIDTH}" height="${height}" fill="#fff"/>`,
    `<text x="${MARGIN}" y="22" font-size="16" font-weight="bold">${esc(heading.title)}</text>`,
    ...(heading.subtitle ? [`<text x="${MARGIN}" y="40" font-size="11" fill="#555">${esc(truncate(heading.subtitle, Math.floor((WIDTH - 2 * MARGIN) / 6.2)))}</text>`] : []),
    ...panels,
    "</svg>",
    "",
  ].join("\n");
}
