// Leak detection: what a test (or the whole suite) must not leave behind.
import { readdirSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { TMP_PREFIX } from "./bundle.js";
import { commandLine, isWaitingSpare, processTable, type ProcessEntry } from "./processes.js";

export interface Leaks {
  qemu: string[];
  shims: string[];
  mounts: string[];
  tempDirs: string[];
  sandboxes: string[];
  /** Network namespaces not in the `netnsBefore` list (pod netns, test netns). */
  netns: string[];
  /** hako taps in the host netns. */
  links: string[];
}

/** Where `ip netns` and CNI (via containerd) keep named network namespaces. */
export const NETNS_DIR = "/var/run/netns";
const SHIM_BUNDLE = join(resolve(import.meta.dirname, "..", ".."), "build", "lib", "hako", "containerd-shim-hako-v2");

export function listNetns(): string[] {
  return existsSync(NETNS_DIR) ? readdirSync(NETNS_DIR).sort() : [];
}


/** QEMU pids that sandboxes under `stateDir` record as theirs. */
function sandboxVmmPids(stateDir: string): Set<number> {
  const dir = join(stateDir, "sandboxes");
  const pids = new Set<number>();
  for (const id of existsSync(dir) ? readdirSync(dir) : []) {
    try {
      pids.add((JSON.parse(readFileSync(join(dir, id, "state.json"), "utf8")) as { vmmPid?: number }).vmmPid ?? 0);
    } catch {
      /* being created or removed */
    }
  }
  return pids;
}

/** QEMUs the VM cache started under `stateDir` (their run dir was <stateDir>/vm-cache/…) that no sandbox has taken. */
export function idleCachedVms(stateDir: string, table: readonly ProcessEntry[] = processTable()): ProcessEntry[] {
  const cacheDir = join(stateDir, "vm-cache") + "/";
  const taken = sandboxVmmPids(stateDir);
  return table.filter((p) => p.comm.startsWith("qemu") && commandLine(p).includes(cacheDir) && !taken.has(p.pid));
}

/**
 * Everything under `stateDir` (the test config's runtime.state_dir) that still
 * exists. `vmCacheRunning`: the VM cache daemon runs, and the VMs it keeps
 * (started under <stateDir>/vm-cache, taken by no sandbox) are its, not leaks.
 */
export function findLeaks(stateDir: string, netnsBefore?: readonly string[], opts: { vmCacheRunning?: boolean } = {}): Leaks {
  const table = processTable();
  const cached = new Set(opts.vmCacheRunning ? idleCachedVms(stateDir, table).map((p) => p.pid) : []);
  const procs = table.map((p) => ({ pid: p.pid, cmd: commandLine(p) }));
  const qemu = procs.filter((p) => p.cmd.includes("qemu-system") && p.cmd.includes(stateDir) && !cached.has(p.pid)).map((p) => `${p.pid} ${p.cmd.slice(0, 160)}`);
  // Shims of this checkout (another checkout's runs are not ours to judge);
  // a spare is one only once its containerd is gone (it exits with it).
  const shims = table
    .filter((p) => commandLine(p).includes(SHIM_BUNDLE) && p.pid !== process.pid && !isWaitingSpare(p))
    .map((p) => `${p.pid} ${commandLine(p).slice(0, 160)}`);
  const netns = netnsBefore ? listNetns().filter((n) => !netnsBefore.includes(n)) : [];
  const links = existsSync("/sys/class/net") ? readdirSync("/sys/class/net").filter((n) => /^tap\d+_hako$/.test(n)) : [];
  const mounts = readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4] ?? "")
    .filter((m) => m.startsWith(stateDir) || m.includes(TMP_PREFIX));
  const tempDirs = readdirSync(tmpdir())
    .filter((n) => n.startsWith(TMP_PREFIX))
    .map((n) => `${tmpdir()}/${n}`);
  const sbDir = `${stateDir}/sandboxes`;
  const sandboxes = existsSync(sbDir) ? readdirSync(sbDir) : [];
  return { qemu, shims, mounts, tempDirs, sandboxes, netns, links };
}

export function describeLeaks(l: Leaks): string {
  return Object.entries(l)
    .filter(([, v]) => (v as string[]).length > 0)
    .map(([k, v]) => `${k}: ${(v as string[]).join(", ")}`)
    .join("; ");
}

export function hasLeaks(l: Leaks): boolean {
  return l.qemu.length + l.shims.length + l.mounts.length + l.sandboxes.length + l.netns.length + l.links.length > 0;
}
