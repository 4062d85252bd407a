// The three measurements of one iteration: the bare-QEMU floor, `hako run
// /bin/true` as a subprocess, and an in-process sandbox (timeline, guest
// details, QEMU memory).
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { buildProbeArgs, PROBE_MARKER } from "../../src/hypervisor/accel-probe.js";
import { createHypervisor } from "../../src/hypervisor/index.js";
import { createLogger } from "../../src/runtime/logger.js";
import { Sandbox } from "../../src/runtime/sandbox.js";
import { onInterrupt, track, untrack } from "./children.js";
import type { KernelEnv } from "./env.js";
import { HAKO } from "../../test/helpers/hako.js";

const TIMEOUT_MS = 120_000;
/** How long QEMU gets to exit by itself after the marker (init exits → panic → reset → -no-reboot). */
const EXIT_GRACE_MS = 10_000;

export interface FloorSample {
  /** QEMU spawn → HAKO_PROBE_OK on the serial console (boot to init). */
  markerMs: number;
  /** QEMU spawn → QEMU process exit (NaN if it had to be killed). */
  exitMs: number;
}

/**
 * How much memory the host frees right before each VM of the boot section:
 * more than a sandbox VM's QEMU touches up to agent ready (~580 MiB RSS with
 * 512 MiB of guest RAM).
 */
export const PRIME_MIB = 1024;

/**
 * Touches `mib` MiB in a child process that then exits, so that the next VM
 * finds that much memory freed a moment ago. Why: on this host (itself a VM,
 * whose kernel reports free pages to its hypervisor) a VM started right after
 * another one had exited reached agent ready ~150–250 ms sooner than one that
 * started after a gap; with the iteration's fixed order, `hako run` always
 * came after the floor's gap and the in-process sandbox right after `hako
 * run`, so the ratio between the two measured the order, not hako
 * (docs/benchmarks.md, "eleventh stop"). Every VM of the iteration starts
 * after the same priming; what it costs the bench is not in any figure.
 */
export function primeHostMemory(mib = PRIME_MIB): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ["-e", `Buffer.allocUnsafe(${mib} * 1024 * 1024).fill(1)`], { stdio: ["ignore", "ignore", "pipe"] });
    track(child.pid, "memory priming");
    let err = "";
    child.stderr.on("data", (b: Buffer) => (err = (err + b.toString()).slice(-2048)));
    child.on("error", (e) => reject(new Error(`cannot prime host memory: ${e.message}`)));
    child.on("close", (code, signal) => {
      untrack(child.pid);
      if (code === 0) resolvePromise();
      else reject(new Error(`priming ${mib} MiB of host memory failed (${signal ?? code}): ${tail(err)}`));
    });
  });
}

function tail(s: string, n = 600): string {
  return s.length > n ? `…${s.slice(-n)}` : s;
}

/** Bare QEMU with the probe argv (same machine options as real VMs), boot to init. */
export function measureFloor(k: KernelEnv): Promise<FloorSample> {
  const q = k.config.hypervisor.qemu;
  const args = buildProbeArgs(k.probe.accel, { qemu: q, kernel: q.kernel, initrd: q.initrd });
  return new Promise((resolvePromise, reject) => {
    const t0 = performance.now();
    const child = spawn(q.path, args, { stdio: ["ignore", "pipe", "pipe"] });
    track(child.pid, "qemu (floor)");
    let out = "";
    let err = "";
    let markerMs = NaN;
    let killedByUs = false;
    let failure: string | undefined;
    const kill = (why: string): void => {
      failure ??= why;
      killedByUs = true;
      if (child.pid !== undefined) {
        try {
          process.kill(child.pid, "SIGKILL");
        } catch {
          /* gone */
        }
      }
    };
    let timer = setTimeout(() => kill(`no ${PROBE_MARKER} within ${TIMEOUT_MS} ms`), TIMEOUT_MS);
    child.stdout.on("data", (b: Buffer) => {
      out = (out + b.toString("latin1")).slice(-8192);
      if (Number.isNaN(markerMs) && out.includes(PROBE_MARKER)) {
        markerMs = performance.now() - t0;
        clearTimeout(timer);
        // Killing after the grace is not a failure: the floor is the marker, exitMs is then NaN.
        timer = setTimeout(() => {
          killedByUs = true;
          try {
            if (child.pid !== undefined) process.kill(child.pid, "SIGKILL");
          } catch {
            /* gone */
          }
        }, EXIT_GRACE_MS);
      }
    });
    child.stderr.on("data", (b: Buffer) => (err = (err + b.toString()).slice(-4096)));
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${q.path}: ${e.message}`));
    });
    child.on("close", (code, signal) => {
      const exitMs = performance.now() - t0;
      clearTimeout(timer);
      untrack(child.pid);
      if (Number.isNaN(markerMs)) {
        reject(new Error(`floor (${k.kernel}): ${failure ?? `QEMU exited (${signal ?? code}) before ${PROBE_MARKER}`}; stderr: ${tail(err)}; console: ${tail(out)}`));
      } else {
        resolvePromise({ markerMs, exitMs: killedByUs ? NaN : exitMs });
      }
    });
  });
}

/** `hako --config CFG run --bundle B ID`, spawn → exit; must exit 0. */
export function measureHakoRun(k: KernelEnv, bundleDir: string, id: string): Promise<number> {
  return timeHako(["--config", k.configFile, "run", "--bundle", bundleDir, id], `hako run (${k.kernel})`);
}

/** `hako --version`, spawn → exit: what node and the CLI bundle cost before any VM work. */
export function measureCliStartup(): Promise<number> {
  return timeHako(["--version"], "hako --version");
}

function timeHako(argv: string[], what: string): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const t0 = performance.now();
    const child = spawn(HAKO, argv, { stdio: ["ignore", "pipe", "pipe"] });
    track(child.pid, "hako");
    let out = "";
    child.stdout.on("data", (b: Buffer) => (out = (out + b.toString()).slice(-4096)));
    child.stderr.on("data", (b: Buffer) => (out = (out + b.toString()).slice(-4096)));
    const timer = setTimeout(() => {
      if (child.pid !== undefined) process.kill(child.pid, "SIGTERM");
    }, TIMEOUT_MS);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${HAKO}: ${e.message}`));
    });
    child.on("close", (code, signal) => {
      const ms = performance.now() - t0;
      clearTimeout(timer);
      untrack(child.pid);
      if (code === 0) resolvePromise(ms);
      else reject(new Error(`${what} exited with ${signal ?? code} after ${Math.round(ms)} ms: ${tail(out.trim())}`));
    });
  });
}

export interface SandboxSample {
  /** Sandbox timeline (ms since the Sandbox object was made): config, vmm_started, agent_ready, sandbox_created. */
  timeline: Record<string, number>;
  /** QEMU spawn (timeline "config", just before hypervisor.start) → agent answered its health check. */
  spawnToAgentMs: number;
  /** QEMU spawn → QMP reports the VM running (timeline vmm_started − config). */
  spawnToQmpMs: number;
  /** Guest uptime when the agent was ready (GetGuestDetails.agentReadyMs). */
  guestAgentReadyMs: number;
  /** agent ready → CreateSandbox done (9p share mounted). */
  createSandboxMs: number;
  /** sb.destroy(): DestroySandbox, QMP quit, cleanup. */
  destroyMs: number;
  rssMiB: number;
  pssMiB: number;
}

/** Rss, Pss and Pss_Anon (kB; Pss_Anon NaN on kernels before 5.8) of a process from /proc/PID/smaps_rollup. */
export function smapsRollup(pid: number): { rssKb: number; pssKb: number; pssAnonKb: number } {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  const optional = (name: string): number => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(text);
    return m ? Number(m[1]) : NaN;
  };
  const field = (name: string): number => {
    const kb = optional(name);
    if (Number.isNaN(kb)) throw new Error(`no ${name} in /proc/${pid}/smaps_rollup`);
    return kb;
  };
  return { rssKb: field("Rss"), pssKb: field("Pss"), pssAnonKb: optional("Pss_Anon") };
}

const quietLog = createLogger("bench", { level: "error" });

/** Boots a sandbox in this process (as scripts/dev/debug-sandbox.ts does) and samples it once the agent is ready. */
export async function measureSandbox(k: KernelEnv, bundleDir: string, id: string): Promise<SandboxSample> {
  const cfg = k.config;
  const sb = new Sandbox(id, { config: cfg, hypervisor: createHypervisor(cfg, quietLog), accel: k.probe.accel, logger: quietLog, bundle: bundleDir });
  const forget = onInterrupt(() => sb.destroy());
  let destroyMs = NaN;
  try {
    sb.claim();
    await sb.start();
    const pid = sb.vm!.pid;
    track(pid, "qemu (sandbox)");
    const mem = smapsRollup(pid);
    const details = await sb.requireAgent().agent.getGuestDetails({});
    const tl = { ...sb.state.timeline } as Record<string, number>;
    const need = (key: string): number => {
      const v = tl[key];
      if (v === undefined) throw new Error(`sandbox timeline has no ${key}: ${JSON.stringify(tl)}`);
      return v;
    };
    const sample: SandboxSample = {
      timeline: tl,
      spawnToAgentMs: need("agent_ready") - need("config"),
      spawnToQmpMs: need("vmm_started") - need("config"),
      guestAgentReadyMs: Number(details.agentReadyMs),
      createSandboxMs: need("sandbox_created") - need("agent_ready"),
      destroyMs: NaN,
      rssMiB: mem.rssKb / 1024,
      pssMiB: mem.pssKb / 1024,
    };
    const t = performance.now();
    await sb.destroy();
    destroyMs = performance.now() - t;
    untrack(pid);
    return { ...sample, destroyMs };
  } finally {
    await sb.destroy(); // idempotent; the real teardown on errors
    if (sb.vm) untrack(sb.vm.pid);
    forget();
  }
}
