// The host's process table from /proc, for tests and benchmarks that look for
// the QEMUs, shims and daemons they started (and must not leave behind).
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";

export interface ProcessEntry {
  pid: number;
  ppid: number;
  argv: string[];
  /** /proc/<pid>/comm. */
  comm: string;
}

export function readProcess(pid: number): ProcessEntry | undefined {
  try {
    let argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter((a) => a !== "");
    // A process that set its title (a spare shim that took a pod) shows one
    // string: its words are the arguments.
    if (argv.length === 1 && argv[0]!.includes(" ")) argv = argv[0]!.split(" ").filter((a) => a !== "");
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

/**
 * A spare shim daemon (src/shim/spare.ts: `... -id hako-spare ... spare N`):
 * it waits for the next pod of its containerd, so it is no pod's shim, and
 * it exits when its containerd does.
 */
export function isSpareShim(p: ProcessEntry): boolean {
  const id = p.argv.indexOf("-id");
  return id >= 0 && p.argv[id + 1] === "hako-spare" && p.argv.includes("spare");
}

/** A spare that still waits for its containerd (its `-address` socket is there): no leak; once that containerd is gone, one. */
export function isWaitingSpare(p: ProcessEntry): boolean {
  const at = p.argv.indexOf("-address");
  return isSpareShim(p) && at >= 0 && existsSync(p.argv[at + 1] ?? "");
}

/** PIDs of the pod shims (not spares) serving the containerd at `address`. */
export function podShimPids(address: string): number[] {
  return processTable()
    .filter((p) => p.argv.includes(address) && !isSpareShim(p))
    .map((p) => p.pid);
}

/** MemAvailable of /proc/meminfo, MiB (how much a set of pods cost the host). */
export function memAvailableMiB(): number {
  const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync("/proc/meminfo", "utf8"));
  if (!m) throw new Error("no MemAvailable in /proc/meminfo");
  return Number(m[1]) / 1024;
}

export interface RunResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

export interface RunOptions {
  input?: Buffer | string;
  /** SIGKILL and reject after this long (default 60 s). */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  /**
   * On timeout send this signal and let the program end as it ends (the
   * result then carries the signal), e.g. SIGTERM for a program that must
   * clean up. Default: SIGKILL and reject at once.
   */
  timeoutSignal?: NodeJS.Signals;
  /** Called with the child's pid once it is spawned (e.g. to track it for an interruption). */
  onSpawn?: (pid: number | undefined) => void;
}

/** Runs a program to its end, collecting stdout (bytes) and stderr (text); stdin gets `input` or EOF. */
export function runToEnd(bin: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  return new Promise((resolvePromise, reject) => {
    const child = spawn(bin, args, { env: opts.env ?? process.env, stdio: ["pipe", "pipe", "pipe"] });
    opts.onSpawn?.(child.pid);
    const out: Buffer[] = [];
    let err = "";
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => {
      if (opts.timeoutSignal) return void child.kill(opts.timeoutSignal);
      child.kill("SIGKILL");
      reject(new Error(`${bin} ${args.join(" ")} timed out after ${timeoutMs} ms; stderr: ${err}`));
    }, timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (status, signal) => {
      clearTimeout(timer);
      resolvePromise({ status, signal, stdout: Buffer.concat(out), stderr: err });
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(opts.input);
  });
}
