// Leak detection: what a test (or the whole suite) must not leave behind.
import { readdirSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { TMP_PREFIX } from "./bundle.js";

export interface Leaks {
  qemu: string[];
  mounts: string[];
  tempDirs: string[];
  sandboxes: string[];
}

function cmdlines(): Array<{ pid: number; cmd: string }> {
  const out: Array<{ pid: number; cmd: string }> = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      out.push({ pid: Number(e), cmd: readFileSync(`/proc/${e}/cmdline`, "utf8").replace(/\0/g, " ").trim() });
    } catch {
      /* gone */
    }
  }
  return out;
}

/** Everything under `stateDir` (the test config's runtime.state_dir) that still exists. */
export function findLeaks(stateDir: string): Leaks {
  const procs = cmdlines();
  const qemu = procs.filter((p) => p.cmd.includes("qemu-system") && p.cmd.includes(stateDir)).map((p) => `${p.pid} ${p.cmd.slice(0, 160)}`);
  const mounts = readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4] ?? "")
    .filter((m) => m.startsWith(stateDir) || m.includes(TMP_PREFIX));
  const tempDirs = readdirSync(tmpdir())
    .filter((n) => n.startsWith(TMP_PREFIX))
    .map((n) => `${tmpdir()}/${n}`);
  const sbDir = `${stateDir}/sandboxes`;
  const sandboxes = existsSync(sbDir) ? readdirSync(sbDir) : [];
  return { qemu, mounts, tempDirs, sandboxes };
}

export function describeLeaks(l: Leaks): string {
  return Object.entries(l)
    .filter(([, v]) => (v as string[]).length > 0)
    .map(([k, v]) => `${k}: ${(v as string[]).join(", ")}`)
    .join("; ");
}

export function hasLeaks(l: Leaks): boolean {
  return l.qemu.length + l.mounts.length + l.sandboxes.length > 0;
}
