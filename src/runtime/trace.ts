// Startup timelines: where the time of a sandbox start goes. The Sandbox
// records a timestamp when each phase ends (state.json `timeline`, ms since
// the sandbox object was made); when the sandbox goes, the timeline is kept in
// <state_dir>/traces/<id>.json so that `hako trace` also works afterwards.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { SandboxState } from "./state.js";

/** Traces kept per state dir (oldest removed first). */
export const MAX_TRACES = 50;

/**
 * Timeline marks in the order they happen, and what the phase ending at each
 * one is. A phase with `from` began at that mark (it ran concurrently with
 * the phase before it) rather than at the previous mark.
 */
const PHASES: ReadonlyArray<{ mark: string; label: string; from?: string }> = [
  { mark: "config", label: "config: accelerator, state dir, share" },
  { mark: "start_slot", label: "wait for a host start slot (start_concurrency)" },
  { mark: "vm_cache_claimed", label: "take a warm VM from the VM cache" },
  { mark: "network_attached", label: "netns scan + taps + tc filters" },
  { mark: "vmm_started", label: "QEMU spawn → running (QMP)" },
  { mark: "vmm_adopted", label: "cached VM adopted (QMP connected)", from: "vm_cache_claimed" },
  { mark: "guest_kernel_booted", label: "guest kernel boot → agent launched" },
  // Cached VM: adopted and its agent reached while its taps move (from: vmm_adopted); otherwise after the boot.
  { mark: "agent_ready", label: "agent start (node) → health check answered", from: "vmm_adopted" },
  { mark: "guest_network", label: "guest network (UpdateInterface/Routes/ARP)", from: "agent_ready" },
  { mark: "sandbox_created", label: "CreateSandbox (hostname, clock, mounts)", from: "agent_ready" },
  { mark: "container_created", label: "first container: share rootfs + CreateContainer" },
  { mark: "container_started", label: "first container: StartContainer (crun run)" },
  { mark: "container_exited", label: "container runs until it exits" },
];

export interface TracePhase {
  name: string;
  label: string;
  startMs: number;
  endMs: number;
}

export interface SandboxTrace {
  id: string;
  /** ISO time the sandbox object was made (timeline 0). */
  created: string;
  accel: string;
  phases: TracePhase[];
  /** Gaps the runtime did not account for (e.g. CRI's own steps between RunPodSandbox and CreateContainer) fold into the next phase. */
  totalMs: number;
}

/**
 * Phases from a timeline: each known mark ends a phase that began at the
 * previous mark present. The guest's own uptime at agent launch (when known)
 * splits QEMU-running → agent-ready into kernel boot and agent start.
 */
export function traceFromState(st: Pick<SandboxState, "id" | "created" | "accel" | "timeline"> & { guestAgentLaunchUptimeMs?: number }): SandboxTrace {
  const tl: Record<string, number> = { ...(st.timeline ?? {}) };
  if (st.guestAgentLaunchUptimeMs !== undefined && tl["vmm_started"] !== undefined && tl["agent_ready"] !== undefined) {
    // The guest's clock starts with its kernel, shortly after QEMU's spawn ("config").
    const booted = (tl["config"] ?? tl["vmm_started"]) + st.guestAgentLaunchUptimeMs;
    if (booted > tl["vmm_started"] && booted < tl["agent_ready"]) tl["guest_kernel_booted"] = booted;
  }
  const phases: TracePhase[] = [];
  let prev = 0;
  for (const p of PHASES) {
    const t = tl[p.mark];
    const start = p.from !== undefined && tl[p.from] !== undefined ? Math.min(tl[p.from]!, prev) : prev;
    if (t === undefined || t < start) continue;
    phases.push({ name: p.mark, label: p.label, startMs: start, endMs: t });
    prev = Math.max(prev, t);
  }
  return { id: st.id, created: st.created, accel: st.accel ?? "", phases, totalMs: prev };
}

export function renderTraceText(t: SandboxTrace, width = 40): string {
  const scale = t.totalMs > 0 ? width / t.totalMs : 0;
  const lines = [`sandbox ${t.id} (${t.accel || "accel unknown"}), created ${t.created}: ${Math.round(t.totalMs)} ms`, ""];
  const labelWidth = Math.max(...t.phases.map((p) => p.label.length), 5);
  lines.push(`${"phase".padEnd(labelWidth)}  ${"start".padStart(6)}  ${"ms".padStart(6)}  `);
  for (const p of t.phases) {
    const offset = Math.round(p.startMs * scale);
    const len = Math.max(1, Math.round((p.endMs - p.startMs) * scale));
    lines.push(`${p.label.padEnd(labelWidth)}  ${String(Math.round(p.startMs)).padStart(6)}  ${String(Math.round(p.endMs - p.startMs)).padStart(6)}  ${" ".repeat(offset)}${"█".repeat(len)}`);
  }
  return `${lines.join("\n")}\n`;
}

/** Text for an XML text node or a double-quoted attribute (also used by bench/lib/chart.ts). */
export const xmlEscape = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

/** A Gantt-style SVG of the phases (one row each). */
export function renderTraceSvg(t: SandboxTrace): string {
  const rowH = 22;
  const labelW = 360;
  const chartW = 520;
  const top = 40;
  const h = top + rowH * t.phases.length + 30;
  const scale = t.totalMs > 0 ? chartW / t.totalMs : 0;
  const colors = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
  const rows = t.phases.map((p, i) => {
    const y = top + i * rowH;
    const x = labelW + p.startMs * scale;
    const w = Math.max(1, (p.endMs - p.startMs) * scale);
    return [
      `<text x="${labelW - 8}" y="${y + 15}" text-anchor="end">${xmlEscape(p.label)}</text>`,
      `<rect x="${x.toFixed(1)}" y="${y + 3}" width="${w.toFixed(1)}" height="${rowH - 6}" fill="${colors[i % colors.length]}"/>`,
      `<text x="${(x + w + 4).toFixed(1)}" y="${y + 15}">${Math.round(p.endMs - p.startMs)} ms</text>`,
    ].join("");
  });
  const title = `sandbox ${t.id.slice(0, 12)} (${t.accel}): ${Math.round(t.totalMs)} ms`;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${labelW + chartW + 80}" height="${h}" font-family="sans-serif" font-size="12">`,
    `<text x="8" y="20" font-size="14" font-weight="bold">${xmlEscape(title)}</text>`,
    ...rows,
    `<line x1="${labelW}" y1="${h - 24}" x2="${labelW + chartW}" y2="${h - 24}" stroke="#999"/>`,
    `<text x="${labelW}" y="${h - 8}">0</text><text x="${labelW + chartW}" y="${h - 8}" text-anchor="end">${Math.round(t.totalMs)} ms</text>`,
    "</svg>",
    "",
  ].join("\n");
}

export function tracesDir(stateDir: string): string {
  return join(stateDir, "traces");
}

/** Keeps a finished sandbox's trace; prunes the oldest beyond MAX_TRACES. Best effort. */
export function archiveTrace(stateDir: string, trace: SandboxTrace): void {
  try {
    const dir = tracesDir(stateDir);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const tmp = join(dir, `.${trace.id}.${process.pid}`);
    writeFileSync(tmp, JSON.stringify(trace, null, 2));
    renameSync(tmp, join(dir, `${trace.id}.json`));
    const files = readdirSync(dir)
      .filter((f) => f.endsWith(".json") && f !== `${trace.id}.json`)
      .map((f) => ({ f, t: statSync(join(dir, f)).mtimeMs }))
      .sort((a, b) => b.t - a.t);
    for (const old of files.slice(MAX_TRACES - 1)) rmSync(join(dir, old.f), { force: true });
  } catch {
    /* a trace is a convenience: never fail a teardown for it */
  }
}

export function readArchivedTrace(stateDir: string, id: string): SandboxTrace | undefined {
  const f = join(tracesDir(stateDir), `${id}.json`);
  if (!existsSync(f)) return undefined;
  try {
    return JSON.parse(readFileSync(f, "utf8")) as SandboxTrace;
  } catch {
    return undefined;
  }
}
