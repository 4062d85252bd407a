// The host's process table from /proc, for tests and benchmarks that look for
// the QEMUs, shims and daemons they started (and must not leave behind).
import { readdirSync, readFileSync } from "node:fs";

export interface ProcessEntry {
  pid: number;
  ppid: number;
  argv: string[];
  /** /proc/<pid>/comm. */
  comm: string;
}

export function readProcess(pid: number): ProcessEntry | undefined {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter((a) => a !== "");
    // comm may hold spaces and parentheses: the fields after it start at the last ") ".
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const ppid = Number(stat.slice(stat.lastIndexOf(") ") + 2).split(" ")[1]);
    const comm = readFileSync(`/proc/${pid}/comm`, "utf8").trim();
    return { pid, ppid, argv, comm };
  } catch {
    return undefined; // exited meanwhile
  }
}

/** Every process of the host, now (this process left out). */
export function processTable(): ProcessEntry[] {
  const out: ProcessEntry[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    const p = readProcess(Number(e));
    if (p) out.push(p);
  }
  return out;
}

/** The command line as one string (for messages and substring matches). */
export const commandLine = (p: ProcessEntry): string => p.argv.join(" ");

/** PIDs of processes with `needle` as one of their arguments. */
export function pidsMatching(needle: string): number[] {
  return processTable()
    .filter((p) => p.argv.includes(needle))
    .map((p) => p.pid);
}
