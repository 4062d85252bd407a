// The end-of-run check: nothing the benchmark made may survive it.
import { commandLine, processTable } from "../../test/helpers/processes.js";
import { existsSync, readdirSync, readFileSync, rmdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { alive, startedPids } from "./children.js";
import { BENCH_TMP_PREFIX } from "./env.js";

export interface LeakReport {
  processes: string[];
  qemu: string[];
  /** containerd shims (hako or runc) serving a section's containerd, or orphaned since the start. */
  shims: string[];
  /** Processes still in the cgroups of the cri section's containers. */
  containerProcesses: string[];
  sandboxes: string[];
  mounts: string[];
  paths: string[];
}

function qemuProcesses(needles: readonly string[]): string[] {
  return processTable()
    .map((p) => ({ pid: p.pid, cmd: commandLine(p) }))
    .filter(({ cmd }) => cmd.includes("qemu-system") && needles.some((n) => cmd.includes(n)))
    .map(({ pid, cmd }) => `${pid} ${cmd.slice(0, 160)}`);
}

export interface SectionLeaks {
  /** From containerdLeaks and criLeaks. */
  shims?: readonly string[];
  containerProcesses?: readonly string[];
  /** More needles for the QEMU scan (`hako-<pod id>` of the cri section's pods). */
  qemuNames?: readonly string[];
}

/**
 * Looks for: live processes among those the benchmark started; any QEMU whose
 * command line names the bench state dir, the temp dir or one of `qemuNames`;
 * sandbox state dirs; mounts under the state dir; the temp dir, the bundle dir
 * and any other hako-bench-* temp dir; plus what the containerd and cri
 * sections report (their dirs, sockets, netns and strays come in `paths`).
 */
export function findLeaks(stateDir: string, paths: readonly string[], sections: SectionLeaks = {}): LeakReport {
  const processes = [...startedPids()].filter(([pid]) => alive(pid)).map(([pid, what]) => `${pid} (${what})`);
  const sbDir = `${stateDir}/sandboxes`;
  const sandboxes = existsSync(sbDir) ? readdirSync(sbDir).map((n) => `${sbDir}/${n}`) : [];
  const mounts = readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4] ?? "")
    .filter((m) => m.startsWith(`${stateDir}/`));
  const strays = readdirSync(tmpdir())
    .filter((n) => n.startsWith(BENCH_TMP_PREFIX))
    .map((n) => `${tmpdir()}/${n}`);
  const left = [...new Set([...paths.filter((p) => p !== "" && existsSync(p)), ...strays])];
  const qemu = qemuProcesses([stateDir, ...paths.filter((p) => p !== ""), ...(sections.qemuNames ?? [])]);
  return {
    processes,
    shims: [...(sections.shims ?? [])],
    containerProcesses: [...(sections.containerProcesses ?? [])],
    qemu,
    sandboxes,
    mounts,
    paths: left,
  };
}

export function describeLeaks(l: LeakReport): string {
  return Object.entries(l)
    .filter(([, v]) => (v as string[]).length > 0)
    .map(([k, v]) => `${k}: ${(v as string[]).join(", ")}`)
    .join("\n  ");
}

export function hasLeaks(l: LeakReport): boolean {
  return Object.values(l).some((v) => (v as string[]).length > 0);
}

/** Removes the (empty) state dir skeleton the sandboxes left: rmdir only, never recursive. */
export function removeEmptyStateDir(stateDir: string): void {
  for (const d of [`${stateDir}/sandboxes`, stateDir]) {
    try {
      rmdirSync(d);
    } catch {
      /* absent, or not empty: leave it */
    }
  }
}
