// Kernel samepage merging (KSM) on the host, a node setting rather than a
// per-pod one. QEMU marks every VM's guest RAM mergeable (its machine option
// mem-merge is on by default), so while ksmd runs, identical pages of all
// guests (the kernel, the rootfs unpacked from the same initrd, the agent's
// code, zero pages) are kept once, copy-on-write. It costs ksmd's CPU while
// it scans, and a merged page that a guest writes is copied again. Kata's
// density metrics (the per-pod PSS they publish) run with KSM on and wait for
// it to settle; the benchmark does the same next to its KSM-off figure
// (docs/benchmarks.md). Admin guide: Documentation/admin-guide/mm/ksm.rst.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export const KSM_DIR = "/sys/kernel/mm/ksm";

/** The knobs the benchmark changes (and puts back). */
export interface KsmSettings {
  /** 0 stopped, 1 running, 2 stopped after unmerging everything. */
  run: number;
  /** Pages scanned per wake-up of ksmd. */
  pagesToScan: number;
  /** Sleep between wake-ups. */
  sleepMillisecs: number;
}

export interface KsmStats {
  /** Completed passes over all mergeable memory. */
  fullScans: number;
  /** Distinct merged pages kept. */
  pagesShared: number;
  /** Mappings of them beyond the first: the pages saved. */
  pagesSharing: number;
}

const SETTING_FILES: ReadonlyArray<[keyof KsmSettings, string]> = [
  ["run", "run"],
  ["pagesToScan", "pages_to_scan"],
  ["sleepMillisecs", "sleep_millisecs"],
];

function readNumber(dir: string, file: string): number {
  const v = Number(readFileSync(join(dir, file), "utf8").trim());
  if (!Number.isFinite(v)) throw new Error(`${join(dir, file)} does not hold a number`);
  return v;
}

/** The kernel has KSM (CONFIG_KSM) and this process may drive it. */
export function ksmAvailable(dir = KSM_DIR): boolean {
  return existsSync(join(dir, "run")) && existsSync(join(dir, "full_scans"));
}

/**
 * Whether this kernel can make a process's whole memory mergeable
 * (PR_SET_MEMORY_MERGE, Linux 6.4+; hako-ksm-exec sets it for QEMU and the
 * shim): its /proc/<pid>/ksm_stat then has a `ksm_merge_any` line.
 */
export function ksmMergeAnyAvailable(procSelf = "/proc/self"): boolean {
  try {
    return /^ksm_merge_any: /m.test(readFileSync(join(procSelf, "ksm_stat"), "utf8"));
  } catch {
    return false;
  }
}

export function readKsmSettings(dir = KSM_DIR): KsmSettings {
  const out = { run: 0, pagesToScan: 0, sleepMillisecs: 0 };
  for (const [key, file] of SETTING_FILES) out[key] = readNumber(dir, file);
  return out;
}

/**
 * Writes the settings, `run` last (ksmd starts with the new pace). Going back
 * to "stopped" from a run that merged pages unmerges them first (run = 2), so
 * that nothing merged outlives the change; `run` then reads 0 again.
 */
export function writeKsmSettings(s: KsmSettings, dir = KSM_DIR): void {
  writeFileSync(join(dir, "pages_to_scan"), String(s.pagesToScan));
  writeFileSync(join(dir, "sleep_millisecs"), String(s.sleepMillisecs));
  if (s.run === 0 && readNumber(dir, "run") === 1) writeFileSync(join(dir, "run"), "2");
  writeFileSync(join(dir, "run"), String(s.run));
}

export function readKsmStats(dir = KSM_DIR): KsmStats {
  return { fullScans: readNumber(dir, "full_scans"), pagesShared: readNumber(dir, "pages_shared"), pagesSharing: readNumber(dir, "pages_sharing") };
}

/** A fast pace for a measurement: ~1 GiB/s scanned on an idle host, a full pass over 10 VMs in seconds. */
export const KSM_AGGRESSIVE: KsmSettings = { run: 1, pagesToScan: 5000, sleepMillisecs: 20 };

export interface KsmSettleResult {
  settled: boolean;
  waitedMs: number;
  stats: KsmStats;
}

/**
 * Waits until KSM has settled: at least `minScans` full passes since the
 * call, and the pages saved (pages_sharing) changed by less than
 * `changeFraction` over the last pass (the pass found little new to merge).
 * Gives up after `timeoutMs` (settled: false).
 */
export async function waitKsmSettled(
  opts: { timeoutMs: number; minScans?: number; changeFraction?: number; pollMs?: number },
  dir = KSM_DIR,
): Promise<KsmSettleResult> {
  const { timeoutMs, minScans = 2, changeFraction = 0.01, pollMs = 250 } = opts;
  const t0 = Date.now();
  const first = readKsmStats(dir);
  let lastScan = first.fullScans;
  let lastSharing = first.pagesSharing;
  for (;;) {
    await sleep(pollMs);
    const now = readKsmStats(dir);
    const waitedMs = Date.now() - t0;
    if (now.fullScans > lastScan) {
      const change = Math.abs(now.pagesSharing - lastSharing) / Math.max(now.pagesSharing, 1);
      if (now.fullScans - first.fullScans >= minScans && change < changeFraction) return { settled: true, waitedMs, stats: now };
      lastScan = now.fullScans;
      lastSharing = now.pagesSharing;
    }
    if (waitedMs >= timeoutMs) return { settled: false, waitedMs, stats: now };
  }
}
