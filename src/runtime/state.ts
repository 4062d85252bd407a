// Persisted sandbox state: /run/hako/sandboxes/<id>/state.json. Written
// atomically; read by `hako state/list/delete` and by cleanup after a crash.
import { readFileSync, renameSync, rmSync, writeFileSync, readdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import type { PodNetworkRecord } from "../resource/network/pod-network.js";

export type SandboxStatus = "creating" | "created" | "running" | "stopped";

export interface SandboxState {
  id: string;
  bundle: string;
  status: SandboxStatus;
  /** Host pid of the process that owns the sandbox (hako run / the shim). */
  ownerPid: number;
  /** Host pid of the VMM, 0 before it started. */
  vmmPid: number;
  /** Guest pid of the container's init. */
  guestPid: number;
  created: string;
  exitStatus?: number;
  accel?: string;
  /** Phase timestamps (ms since the start of sandbox creation). */
  timeline?: Record<string, number>;
  /** Key of the VM template this sandbox was cloned from (absent: booted cold). */
  template?: string;
  /** The VM was taken from the VM cache (`hako factory cache`) rather than started by this sandbox. */
  vmCache?: boolean;
  /** Guest uptime when init launched the agent: splits the boot into kernel and agent start (hako trace). */
  guestAgentLaunchUptimeMs?: number;
  /** Pod network plumbing (netns path, taps, filters) to remove when the sandbox goes, even after its owner died. */
  network?: PodNetworkRecord;
}

export function sandboxesDir(stateDir: string): string {
  return join(stateDir, "sandboxes");
}

export function sandboxDir(stateDir: string, id: string): string {
  return join(sandboxesDir(stateDir), id);
}

export function writeState(dir: string, st: SandboxState): void {
  const tmp = join(dir, `.state.json.${process.pid}`);
  writeFileSync(tmp, JSON.stringify(st, null, 2));
  renameSync(tmp, join(dir, "state.json"));
}

export function readState(dir: string): SandboxState | undefined {
  try {
    return JSON.parse(readFileSync(join(dir, "state.json"), "utf8")) as SandboxState;
  } catch {
    return undefined;
  }
}

export function listSandboxIds(stateDir: string): string[] {
  const d = sandboxesDir(stateDir);
  if (!existsSync(d)) return [];
  return readdirSync(d).filter((n) => !n.startsWith("."));
}

export function pidAlive(pid: number): boolean {
  if (!pid || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** True if `pid` is alive and its command line contains `needle` (guards against pid reuse). */
export function pidMatches(pid: number, needle: string): boolean {
  if (!pidAlive(pid)) return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(needle);
  } catch {
    return false;
  }
}

/** The live process (its command line contains `needle`) whose pid the file at `path` holds. */
export function pidFileHolder(path: string, needle: string): number | undefined {
  let pid: number;
  try {
    pid = Number(readFileSync(path, "utf8"));
  } catch {
    return undefined;
  }
  return pid > 0 && pidMatches(pid, needle) ? pid : undefined;
}

/** A pid file held by one live process at a time: this one, or `holder`. */
export type PidFileLock = { held: true; release(): void } | { held: false; holder: number };

/**
 * Takes the pid file at `path` (created exclusively, holding this pid) unless
 * a live process whose command line contains `needle` holds it; a file left
 * by a process that is gone is taken over. Two takers of such a file could
 * both win; callers must tolerate that (rare: the holder died). release()
 * removes the file only while it still names this process.
 */
export function tryPidFileLock(path: string, needle: string): PidFileLock {
  const me = String(process.pid);
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(path, me, { flag: "wx" });
      return {
        held: true,
        release: () => {
          try {
            if (readFileSync(path, "utf8") === me) rmSync(path, { force: true });
          } catch {
            /* already gone */
          }
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const holder = pidFileHolder(path, needle);
      if (holder !== undefined && holder !== process.pid) return { held: false, holder };
      if (attempt > 0) return { held: false, holder: holder ?? 0 };
      rmSync(path, { force: true });
    }
  }
}

/**
 * SIGKILLs a sandbox's QEMU by its recorded pid, if that pid is still a QEMU
 * (its owner is gone, or never adopted it), and waits up to 5 s for it to go.
 */
export async function killRecordedVmm(pid: number): Promise<void> {
  if (!pidMatches(pid, "qemu")) return;
  process.kill(pid, "SIGKILL");
  for (let i = 0; i < 50 && pidMatches(pid, "qemu"); i++) await new Promise((r) => setTimeout(r, 100));
}
