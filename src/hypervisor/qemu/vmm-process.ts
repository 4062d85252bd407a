// The QEMU process of a VM, seen from hako: a child it spawned (and reaps),
// or a process another hako process spawned and handed over (the VM cache,
// src/runtime/vm-cache.ts), watched through /proc because it is not our child.
import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, readFileSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { Code } from "../../protocols/ttrpc/status.js";
import { HypervisorError } from "../../runtime/errors.js";
import type { VmExit } from "../hypervisor.js";

/** Program that enters a network namespace and execs QEMU (so the spawned pid stays QEMU's). */
export const NSENTER = "nsenter";

/** How QEMU is started, besides its path and arguments. */
export interface LaunchOptions {
  /** For a VM with pod networking: QEMU runs in this netns (`nsenter --net=`). */
  netnsPath?: string;
  /** GLIBC_TUNABLES for QEMU, before any it would inherit (a later setting of the same tunable wins); "" leaves it as inherited. */
  glibcTunables?: string;
  /**
   * hako-ksm-exec (src/resource/ksm-exec.c) and its setting: QEMU starts
   * through it with the kernel's process-wide KSM setting on or off
   * (`[hypervisor.qemu] merge_all_memory`), whatever its parent had.
   */
  ksm?: { exec: string; mergeAll: boolean };
}

/**
 * The program and argv that start QEMU: directly, or, for a VM with pod
 * networking, through `nsenter --net=<netns>` (which execs QEMU, keeping the
 * pid) so that QEMU opens its taps inside the pod netns; both, if asked,
 * through hako-ksm-exec, which execs too (the setting survives execve).
 */
export function launchCommand(qemuPath: string, args: readonly string[], opts: LaunchOptions = {}): { file: string; argv: string[] } {
  const inNetns = opts.netnsPath === undefined ? [qemuPath, ...args] : [NSENTER, `--net=${opts.netnsPath}`, "--", qemuPath, ...args];
  const argv = opts.ksm === undefined ? inNetns : [opts.ksm.exec, opts.ksm.mergeAll ? "on" : "off", ...inNetns];
  return { file: argv[0]!, argv: argv.slice(1) };
}

/** Why `file` (a path, or a name looked up in PATH as execvp does) cannot be executed, or undefined if it can. */
export function notExecutable(file: string): Error | undefined {
  const candidates = file.includes("/") ? [file] : (process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin").split(":").map((d) => join(d || ".", file));
  let last: Error | undefined;
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      if (statSync(c).isFile()) return undefined;
      last = Object.assign(new Error(`${c} is not a file`), { code: "EACCES" });
    } catch (err) {
      last = err as Error;
    }
  }
  return file.includes("/") ? last : Object.assign(new Error(`${file} not found in PATH (spawn ${file} ENOENT)`), { code: "ENOENT" });
}

/** Keeps the last `limit` bytes written to it (QEMU's stderr/stdout). */
export class TailBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly limit = 64 * 1024) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size > this.limit) {
      const first = this.chunks[0]!;
      const excess = this.size - this.limit;
      if (first.length <= excess) {
        this.chunks.shift();
        this.size -= first.length;
      } else {
        this.chunks[0] = first.subarray(excess);
        this.size -= excess;
      }
    }
  }

  text(): string {
    return Buffer.concat(this.chunks).toString("utf8");
  }
}

/** The last `bytes` of a file as printable text ("" if missing). */
export async function fileTail(path: string, bytes = 4096): Promise<string> {
  let fh;
  try {
    fh = await open(path, "r");
    const { size } = await fh.stat();
    const len = Math.min(size, bytes);
    const buf = Buffer.alloc(len);
    await fh.read(buf, 0, len, size - len);
    return printable(buf.toString("utf8"));
  } catch {
    return "";
  } finally {
    await fh?.close();
  }
}

export function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/\r/g, "").replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "");
}

export function lastLines(s: string, n: number): string {
  const lines = s.trimEnd().split("\n");
  return lines.slice(-n).join("\n");
}

/** Formats the QEMU stderr and console tails for an error message. */
export function diagnostics(stderr: string, consoleTail: string): string {
  const parts: string[] = [];
  const e = lastLines(printable(stderr), 20);
  const c = lastLines(consoleTail, 20);
  parts.push(e ? `\n--- QEMU stderr (tail) ---\n${e}` : "\n--- QEMU stderr: empty ---");
  parts.push(c ? `\n--- console log (tail) ---\n${c}` : "\n--- console log: empty ---");
  return parts.join("");
}

export function exitText(exit: VmExit): string {
  if (exit.signal) return `killed by ${exit.signal}`;
  return exit.code === null ? "exit status unknown (not our child)" : `exit code ${exit.code}`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function sendSignal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ESRCH") throw err;
  }
}

/** What a QemuVirtualMachine needs of its QEMU process. */
export interface VmmProcess {
  readonly pid: number;
  readonly exited: Promise<VmExit>;
  readonly exit: VmExit | undefined;
  readonly running: boolean;
  signal(sig: NodeJS.Signals): void;
  /** Resolves true if QEMU exited within ms. */
  waitExit(ms: number): Promise<boolean>;
  /** SIGKILL by pid and wait for the exit. */
  kill(): Promise<VmExit | undefined>;
  /** QEMU's stdout/stderr so far (empty for an adopted process: its output went to the process that spawned it). */
  outputText(): Promise<string>;
}

/** A spawned QEMU process: its pid, exit promise and output tail. */
export class QemuProcess implements VmmProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly output = new TailBuffer();
  readonly exited: Promise<VmExit>;
  /** Resolves when stdout/stderr are drained after exit. */
  private readonly closed: Promise<void>;
  exit: VmExit | undefined;

  private constructor(child: ChildProcess, pid: number) {
    this.child = child;
    this.pid = pid;
    child.stdout?.on("data", (b: Buffer) => this.output.push(b));
    child.stderr?.on("data", (b: Buffer) => this.output.push(b));
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
    this.closed = new Promise((resolve) => child.once("close", () => resolve()));
  }

  static async spawn(id: string, path: string, args: string[], opts: LaunchOptions = {}): Promise<QemuProcess> {
    const cmd = launchCommand(path, args, opts);
    const cannotRun = (file: string, err: Error): HypervisorError => {
      const [what, hint] =
        file === path
          ? [`QEMU ${path}`, "install qemu-system-x86 or set hypervisor.qemu.path"]
          : file === NSENTER
            ? [`${NSENTER} (to start QEMU in netns ${opts.netnsPath})`, "install util-linux (nsenter)"]
            : [`${file} (to start QEMU with its memory mergeable by KSM)`, "reinstall hako (`make install` builds it) or set hypervisor.qemu.merge_all_memory = false"];
      return new HypervisorError(id, `cannot run ${what} for sandbox ${id}: ${err.message}`, { code: Code.FAILED_PRECONDITION, hint, cause: err });
    };
    // The programs hako-ksm-exec would exec: a missing one is this error, not an early exit.
    if (opts.ksm !== undefined) {
      for (const file of opts.netnsPath === undefined ? [path] : [NSENTER, path]) {
        const missing = notExecutable(file);
        if (missing !== undefined) throw cannotRun(file, missing);
      }
    }
    const tunables = opts.glibcTunables ?? "";
    const env = tunables === "" ? process.env : { ...process.env, GLIBC_TUNABLES: [tunables, process.env.GLIBC_TUNABLES ?? ""].filter((t) => t !== "").join(":") };
    const child = spawn(cmd.file, cmd.argv, { stdio: ["ignore", "pipe", "pipe"], env });
    if (child.pid === undefined) throw cannotRun(cmd.file, await new Promise<Error>((resolve) => child.once("error", resolve)));
    child.on("error", () => {}); // signalling errors are handled where we signal
    return new QemuProcess(child, child.pid);
  }

  get running(): boolean {
    return this.exit === undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  signal(sig: NodeJS.Signals): void {
    if (this.running) sendSignal(this.pid, sig);
  }

  /** Resolves true if QEMU exited within ms. */
  async waitExit(ms: number): Promise<boolean> {
    if (!this.running) return true;
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([this.exited.then(() => true), new Promise<boolean>((res) => (t = setTimeout(() => res(false), ms)))]);
    clearTimeout(t);
    return r;
  }

  /** SIGKILL by pid and wait for the exit. */
  async kill(): Promise<VmExit | undefined> {
    this.signal("SIGKILL");
    await this.waitExit(10_000);
    return this.exit;
  }

  /** QEMU's output so far, after draining its pipes (briefly) if it has exited. */
  async outputText(): Promise<string> {
    if (!this.running) await Promise.race([this.closed, sleep(300)]);
    return this.output.text();
  }
}


/** "gone", "zombie" (exited, not yet reaped by its parent) or "alive", from /proc/<pid>/stat. */
export function procState(pid: number): "gone" | "zombie" | "alive" {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return "gone";
  }
  // comm may hold spaces and parentheses: the state follows the last ") ".
  const state = stat.slice(stat.lastIndexOf(") ") + 2, stat.lastIndexOf(") ") + 3);
  return state === "Z" || state === "X" ? "zombie" : "alive";
}

/**
 * A QEMU another process spawned (the VM cache daemon, its parent, reaps it)
 * and handed over to this one. Its exit is seen through /proc: polled slowly
 * in the background, quickly while somebody waits for it, and at once when
 * `check()` is called (on the QMP socket closing). The exit status belongs to
 * the parent, so `exit` has neither code nor signal unless we killed it.
 */
export class AdoptedQemuProcess implements VmmProcess {
  exit: VmExit | undefined;
  readonly exited: Promise<VmExit>;
  private resolveExit!: (e: VmExit) => void;
  private killedWith: NodeJS.Signals | null = null;
  private readonly timer: NodeJS.Timeout;

  constructor(
    readonly pid: number,
    backgroundPollMs = 1000,
  ) {
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
    this.timer = setInterval(() => this.check(), backgroundPollMs);
    this.timer.unref();
    this.check();
  }

  /** Records the exit if the process is gone (or a zombie). */
  check(): void {
    if (this.exit || procState(this.pid) === "alive") return;
    clearInterval(this.timer);
    this.exit = { code: null, signal: this.killedWith };
    this.resolveExit(this.exit);
  }

  get running(): boolean {
    this.check();
    return this.exit === undefined;
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.running) return;
    if (sig === "SIGKILL" || sig === "SIGTERM") this.killedWith = sig;
    sendSignal(this.pid, sig);
  }

  async waitExit(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (this.running) {
      if (Date.now() >= deadline) return false;
      await sleep(Math.min(25, Math.max(1, deadline - Date.now())));
    }
    return true;
  }

  async kill(): Promise<VmExit | undefined> {
    this.signal("SIGKILL");
    await this.waitExit(10_000);
    return this.exit;
  }

  async outputText(): Promise<string> {
    return "";
  }
}
