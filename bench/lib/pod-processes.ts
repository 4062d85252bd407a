// The host processes of one CRI pod, found from /proc, and their memory.
//
// A pod's shim is the containerd-shim-*-v2 daemon whose argv has
// `-address <our containerd socket>` and `-id <pod id>` (containerd groups a
// pod's containers under the shim started for its sandbox, so the group id is
// the pod id). The pod's other processes are the shim's descendants: for
// runc the pause process and the container's processes (the shim is their
// subreaper), for hako the QEMU it spawned. A hako pod's QEMU is also found by
// its `-name hako-<pod id>`, which must match the descendant.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { smapsRollup } from "./measure.js";
import { memAvailableMiB, processTable, type ProcessEntry } from "../../test/helpers/processes.js";

export { memAvailableMiB, processTable, type ProcessEntry };


export interface PodProcesses {
  shim: ProcessEntry;
  /** The shim's descendants (QEMU for hako; pause and the containers' processes for runc). */
  descendants: ProcessEntry[];
}

export interface ProcessMemory {
  pid: number;
  /** "shim", "qemu", "pause" (a runc pod's sandbox process: its cgroup names the pod id), or the process's comm. */
  role: string;
  rssMiB: number;
  pssMiB: number;
  /** The anonymous part of the PSS (the rest is file-backed: binaries, libraries, for QEMU the kernel and initrd). */
  pssAnonMiB: number;
}

export interface PodMemory {
  podId: string;
  /** Sums over `processes`. */
  rssMiB: number;
  pssMiB: number;
  processes: ProcessMemory[];
}



/** The value after `flag` in argv ("" if absent). */
export function flagValue(argv: readonly string[], flag: string): string {
  const at = argv.indexOf(flag);
  return at >= 0 ? (argv[at + 1] ?? "") : "";
}

export function isShim(p: ProcessEntry): boolean {
  return p.argv.some((a) => /containerd-shim-(hako|runc)-v2/.test(basename(a)));
}

/** Shims whose `-address` is `containerdAddress`. */
export function shimsServing(table: readonly ProcessEntry[], containerdAddress: string): ProcessEntry[] {
  return table.filter((p) => isShim(p) && flagValue(p.argv, "-address") === containerdAddress);
}

/** QEMU processes named after the sandbox `id` (`-name hako-<id>`). */
export function qemusOf(table: readonly ProcessEntry[], id: string): ProcessEntry[] {
  return table.filter((p) => (p.argv[0] ?? "").includes("qemu-system") && flagValue(p.argv, "-name") === `hako-${id}`);
}

/** The pod's shim and its descendants, or undefined when no shim serves it. */
export function podProcesses(table: readonly ProcessEntry[], containerdAddress: string, podId: string): PodProcesses | undefined {
  const shims = shimsServing(table, containerdAddress).filter((p) => flagValue(p.argv, "-id") === podId);
  if (shims.length > 1) throw new Error(`pod ${podId}: ${shims.length} shims (${shims.map((s) => s.pid).join(", ")})`);
  const shim = shims[0];
  if (!shim) return undefined;
  const children = new Map<number, ProcessEntry[]>();
  for (const p of table) children.set(p.ppid, [...(children.get(p.ppid) ?? []), p]);
  const descendants: ProcessEntry[] = [];
  const queue = [shim.pid];
  while (queue.length > 0) {
    for (const child of children.get(queue.shift()!) ?? []) {
      descendants.push(child);
      queue.push(child.pid);
    }
  }
  return { shim, descendants };
}

const mib = (kb: number): number => kb / 1024;

/**
 * RSS and PSS of a pod's processes (read now). For a hako pod the QEMU named
 * after the pod must be among the shim's descendants.
 */
export function podMemory(containerdAddress: string, podId: string, hakoPod: boolean, table: readonly ProcessEntry[] = processTable(), cachedVmPid?: number): PodMemory {
  const procs = podProcesses(table, containerdAddress, podId);
  if (!procs) throw new Error(`pod ${podId}: no shim serving ${containerdAddress} with -id ${podId}`);
  if (cachedVmPid !== undefined) {
    // Taken from the VM cache: not the shim's child, named after the cached VM; the sandbox's state names it.
    const qemu = table.find((p) => p.pid === cachedVmPid && p.comm.startsWith("qemu"));
    if (!qemu) throw new Error(`pod ${podId}: its cached VM's QEMU (pid ${cachedVmPid}, from its state.json) is not running`);
    return memoryOf(podId, [{ p: procs.shim, role: "shim" }, ...procs.descendants.map((p) => ({ p, role: p.comm })), { p: qemu, role: "qemu" }]);
  }
  const qemuPids = new Set(qemusOf(table, podId).map((p) => p.pid));
  if (hakoPod) {
    const underShim = procs.descendants.filter((p) => qemuPids.has(p.pid));
    if (qemuPids.size !== 1 || underShim.length !== 1) {
      throw new Error(`pod ${podId}: expected its one QEMU (-name hako-${podId}) under shim ${procs.shim.pid}, found ${[...qemuPids].join(", ") || "none"}`);
    }
  }
  const role = (p: ProcessEntry): string => (p.pid === procs.shim.pid ? "shim" : qemuPids.has(p.pid) ? "qemu" : cgroupOf(p.pid).includes(podId) ? "pause" : p.comm);
  return memoryOf(podId, [procs.shim, ...procs.descendants].map((p) => ({ p, role: role(p) })));
}

function memoryOf(podId: string, list: ReadonlyArray<{ p: ProcessEntry; role: string }>): PodMemory {
  const processes = list.map(({ p, role }): ProcessMemory => {
    const m = smapsRollup(p.pid);
    return { pid: p.pid, role, rssMiB: mib(m.rssKb), pssMiB: mib(m.pssKb), pssAnonMiB: mib(m.pssAnonKb) };
  });
  const sum = (f: (m: ProcessMemory) => number): number => processes.reduce((acc, m) => acc + f(m), 0);
  return { podId, rssMiB: sum((m) => m.rssMiB), pssMiB: sum((m) => m.pssMiB), processes };
}

function cgroupOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cgroup`, "utf8");
  } catch {
    return "";
  }
}


/** Processes whose cgroup path names one of `ids` (runc containers left running). */
export function processesInCgroupsOf(ids: readonly string[]): string[] {
  if (ids.length === 0) return [];
  const found: string[] = [];
  for (const p of processTable()) {
    const cgroup = cgroupOf(p.pid);
    if (ids.some((id) => cgroup.includes(id))) found.push(`${p.pid} ${p.argv.join(" ").slice(0, 120)}`);
  }
  return found;
}
