// The QEMU variant of the Hypervisor seam: one QEMU process per sandbox VM,
// controlled over QMP. Every path out of start() that fails kills the QEMU it
// spawned (by pid) and removes its sockets and pid file.
import { spawn, type ChildProcess } from "node:child_process";
import { open, rm } from "node:fs/promises";
import { join } from "node:path";
import { Code } from "../../protocols/ttrpc/status.js";
import type { QemuConfig } from "../../runtime/config.js";
import { HakoError, HypervisorError } from "../../runtime/errors.js";
import type { Logger } from "../../runtime/logger.js";
import type { Hypervisor, VirtualMachine, VmExit, VmSpec } from "../hypervisor.js";
import { buildQemuArgs, type QemuPaths, type Transport } from "./command-line.js";
import { QmpClient } from "./qmp-client.js";

/** Longest unix socket path Linux accepts (sun_path is 108 bytes with the NUL). */
const MAX_SOCKET_PATH = 107;

export interface QemuHypervisorOptions {
  /** Host TSC kHz for tsc_early_khz (default: /proc/cpuinfo). */
  hostTscKhz?: number;
  /** Overrides the virtio transport derived from the machine type. */
  transport?: Transport;
}

/** Program that enters a network namespace and execs QEMU (so the spawned pid stays QEMU's). */
export const NSENTER = "nsenter";

/**
 * The program and argv that start QEMU: directly, or, for a VM with pod
 * networking, through `nsenter --net=<netns>` (which execs QEMU, keeping the
 * pid) so that QEMU opens its taps inside the pod netns.
 */
export function launchCommand(qemuPath: string, args: readonly string[], netnsPath?: string): { file: string; argv: string[] } {
  if (netnsPath === undefined) return { file: qemuPath, argv: [...args] };
  return { file: NSENTER, argv: [`--net=${netnsPath}`, "--", qemuPath, ...args] };
}

export function vmPaths(runDir: string): QemuPaths {
  return {
    qmpSocket: join(runDir, "qmp.sock"),
    agentSocket: join(runDir, "agent.sock"),
    pidFile: join(runDir, "qemu.pid"),
  };
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

function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/\r/g, "").replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "");
}

function lastLines(s: string, n: number): string {
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

function exitText(exit: VmExit): string {
  return exit.signal ? `killed by ${exit.signal}` : `exit code ${exit.code}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function sendSignal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ESRCH") throw err;
  }
}

/** A spawned QEMU process: its pid, exit promise and output tail. */
class QemuProcess {
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

  static async spawn(id: string, path: string, args: string[], netnsPath?: string): Promise<QemuProcess> {
    const cmd = launchCommand(path, args, netnsPath);
    const child = spawn(cmd.file, cmd.argv, { stdio: ["ignore", "pipe", "pipe"] });
    if (child.pid === undefined) {
      const err = await new Promise<Error>((resolve) => child.once("error", resolve));
      throw new HypervisorError(id, `cannot run ${cmd.file === path ? `QEMU ${path}` : `${cmd.file} (to start QEMU in netns ${netnsPath})`} for sandbox ${id}: ${err.message}`, {
        code: Code.FAILED_PRECONDITION,
        hint: cmd.file === path ? "install qemu-system-x86 or set hypervisor.qemu.path" : "install util-linux (nsenter)",
        cause: err,
      });
    }
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

async function removeFiles(paths: QemuPaths): Promise<void> {
  await Promise.all([paths.qmpSocket, paths.agentSocket, paths.pidFile].map((p) => rm(p, { force: true }).catch(() => {})));
}

export class QemuVirtualMachine implements VirtualMachine {
  readonly id: string;
  readonly pid: number;
  readonly agentSocketPath: string;
  readonly consoleLog: string;
  readonly exited: Promise<VmExit>;
  readonly paths: QemuPaths;
  private readonly proc: QemuProcess;
  private readonly qmp: QmpClient;
  private readonly logger: Logger | undefined;
  private stopping: Promise<VmExit> | undefined;

  constructor(spec: VmSpec, proc: QemuProcess, qmp: QmpClient, paths: QemuPaths, logger: Logger | undefined) {
    this.id = spec.id;
    this.pid = proc.pid;
    this.agentSocketPath = paths.agentSocket;
    this.consoleLog = spec.consoleLog;
    this.exited = proc.exited;
    this.paths = paths;
    this.proc = proc;
    this.qmp = qmp;
    this.logger = logger;
    void proc.exited.then(async (exit) => {
      qmp.close();
      if (!this.stopping) {
        const out = await proc.outputText();
        this.logger?.warn({ exit, stderr: lastLines(printable(out), 20) }, "QEMU exited unexpectedly");
        await removeFiles(paths);
      }
    });
  }

  /** QMP access for later features (device_add, migrate). */
  get monitor(): QmpClient {
    return this.qmp;
  }

  async pause(): Promise<void> {
    await this.command("stop");
  }

  async saveState(file: string): Promise<void> {
    await this.command("stop");
    await this.qmp.execute("migrate-set-capabilities", IGNORE_SHARED);
    await this.qmp.execute("migrate", { uri: `exec:cat > ${shellQuote(file)}` });
    await migrationCompleted(this.qmp, this.id, "saving the VM state", Date.now() + 60_000);
  }

  async resume(): Promise<void> {
    await this.command("cont");
  }

  private async command(cmd: string): Promise<void> {
    if (!this.proc.running || !this.qmp.connected) {
      const how = this.proc.exit ? ` (QEMU ${exitText(this.proc.exit)})` : "";
      throw new HypervisorError(this.id, `cannot ${cmd === "stop" ? "pause" : "resume"} the VM of sandbox ${this.id}: it is not running${how}`, {
        code: Code.FAILED_PRECONDITION,
      });
    }
    try {
      await this.qmp.execute(cmd);
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      throw new HypervisorError(this.id, `${cmd === "stop" ? "pausing" : "resuming"} the VM of sandbox ${this.id} failed: ${msg}`, {
        code: err instanceof HakoError ? err.code : Code.INTERNAL,
        cause: err,
      });
    }
  }

  stop(graceMs = 2000): Promise<VmExit> {
    this.stopping ??= this.doStop(graceMs);
    return this.stopping;
  }

  private async doStop(graceMs: number): Promise<VmExit> {
    const proc = this.proc;
    if (proc.running && this.qmp.connected) {
      this.qmp.execute("quit", undefined, { timeoutMs: graceMs }).catch(() => {}); // the reply may race with the socket closing
    }
    if (!(await proc.waitExit(graceMs))) {
      this.logger?.warn({ pid: proc.pid, graceMs }, "QEMU did not quit over QMP; sending SIGTERM");
      proc.signal("SIGTERM");
      if (!(await proc.waitExit(Math.max(500, Math.floor(graceMs / 2))))) {
        this.logger?.warn({ pid: proc.pid }, "QEMU ignored SIGTERM; sending SIGKILL");
        await proc.kill();
      }
    }
    this.qmp.close();
    await removeFiles(this.paths);
    if (proc.running) {
      throw new HypervisorError(this.id, `QEMU (pid ${proc.pid}) of sandbox ${this.id} did not exit after SIGKILL`, {
        code: Code.INTERNAL,
        hint: "the process may be stuck in the kernel (D state); check it with ps and the host kernel log",
      });
    }
    return proc.exit!;
  }
}

/** RAM stays in the (template's) memory file; only device state goes through the migration stream. */
const IGNORE_SHARED = { capabilities: [{ capability: "x-ignore-shared", state: true }] };

const shellQuote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

async function migrationCompleted(qmp: QmpClient, id: string, what: string, deadline: number): Promise<void> {
  for (;;) {
    const st = await qmp.execute<{ status?: string; "error-desc"?: string }>("query-migrate", undefined, { timeoutMs: Math.max(1, deadline - Date.now()) });
    if (st.status === "completed") return;
    if (st.status === "failed" || st.status === "cancelled")
      throw new HypervisorError(id, `${what} of sandbox ${id} failed: ${st["error-desc"] ?? st.status}`, {
        code: Code.INTERNAL,
        hint: "a template that does not match this QEMU or configuration cannot be restored: `hako factory destroy` then `hako factory init`",
      });
    if (Date.now() > deadline) throw new HypervisorError(id, `${what} of sandbox ${id} did not finish in time`, { code: Code.DEADLINE_EXCEEDED });
    await sleep(5);
  }
}

/** Loads a template's saved device state into a VM started with -incoming defer, then runs it. */
async function restoreFromState(qmp: QmpClient, id: string, stateFile: string, deadline: number): Promise<void> {
  await qmp.execute("migrate-set-capabilities", IGNORE_SHARED);
  await qmp.execute("migrate-incoming", { uri: `exec:cat ${shellQuote(stateFile)}` });
  await migrationCompleted(qmp, id, "restoring the template", deadline);
  const st = await qmp.execute<{ status: string }>("query-status");
  if (st.status !== "running") await qmp.execute("cont");
}

export class QemuHypervisor implements Hypervisor {
  readonly name = "qemu";
  private readonly qemu: QemuConfig;
  private readonly logger: Logger | undefined;
  private readonly opts: QemuHypervisorOptions;

  constructor(qemu: QemuConfig, logger?: Logger, opts: QemuHypervisorOptions = {}) {
    this.qemu = qemu;
    this.logger = logger;
    this.opts = opts;
  }

  async start(spec: VmSpec, signal?: AbortSignal): Promise<VirtualMachine> {
    const id = spec.id;
    const log = this.logger?.child({ sandbox: id });
    const cancelled = (): HypervisorError =>
      new HypervisorError(id, `start of the VM of sandbox ${id} was cancelled`, { code: Code.CANCELLED, cause: signal?.reason });
    if (signal?.aborted) throw cancelled();

    const paths = vmPaths(spec.runDir);
    for (const p of [paths.qmpSocket, paths.agentSocket]) {
      if (Buffer.byteLength(p) > MAX_SOCKET_PATH) {
        throw new HypervisorError(id, `socket path ${p} of sandbox ${id} is longer than ${MAX_SOCKET_PATH} bytes`, {
          code: Code.INVALID_ARGUMENT,
          hint: "use a shorter runtime.state_dir",
        });
      }
    }
    let args: string[];
    try {
      args = buildQemuArgs(spec, this.qemu, paths, { hostTscKhz: this.opts.hostTscKhz, transport: this.opts.transport });
    } catch (err) {
      throw new HypervisorError(id, `cannot build the QEMU command line for sandbox ${id}: ${(err as Error).message}`, {
        code: Code.INVALID_ARGUMENT,
        cause: err,
      });
    }
    await removeFiles(paths);

    const t0 = Date.now();
    const netnsPath = spec.network?.netnsPath;
    const proc = await QemuProcess.spawn(id, this.qemu.path, args, netnsPath);
    log?.debug({ pid: proc.pid, qemu: this.qemu.path, netns: netnsPath, args }, "QEMU spawned");

    const bootMs = this.qemu.boot_timeout * 1000;
    const deadline = t0 + bootMs;
    const internal = new AbortController();
    let qmp: QmpClient | undefined;
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;

    const connectAndWait = async (): Promise<QmpClient> => {
      const c = await QmpClient.connect({ socketPath: paths.qmpSocket, id, deadline, signal: internal.signal, logger: log });
      if (internal.signal.aborted) {
        c.close();
        throw cancelled();
      }
      qmp = c;
      if (spec.restoreState) await restoreFromState(c, id, spec.restoreState, deadline);
      for (;;) {
        const st = await c.execute<{ status: string; running: boolean }>("query-status", undefined, {
          timeoutMs: Math.max(1, deadline - Date.now()),
        });
        if (st.status === "running") return c;
        if (st.status !== "prelaunch" && st.status !== "inmigrate") {
          throw new HypervisorError(id, `the VM of sandbox ${id} is in state "${st.status}" instead of running`, { code: Code.INTERNAL });
        }
        await sleep(20);
      }
    };

    const exitError = (exit: VmExit): HypervisorError =>
      new HypervisorError(id, `QEMU for sandbox ${id} exited during start (${exitText(exit)})`, {
        code: Code.UNAVAILABLE,
        hint: `see the QEMU output below; check hypervisor.qemu (path, kernel, initrd, machine_type, accel)${
          netnsPath === undefined ? "" : `; QEMU was started in netns ${netnsPath}: check that it exists and holds the taps ${spec.network!.nics.map((n) => n.tapName).join(", ")}`
        }`,
      });
    const failure = new Promise<never>((_, reject) => {
      void proc.exited.then((exit) => reject(exitError(exit)));
      timer = setTimeout(
        () =>
          reject(
            new HypervisorError(id, `QEMU for sandbox ${id} did not report a running VM within ${this.qemu.boot_timeout} s`, {
              code: Code.DEADLINE_EXCEEDED,
              hint: "raise hypervisor.qemu.boot_timeout if the host is slow",
            }),
          ),
        bootMs,
      );
      if (signal) {
        onAbort = () => reject(cancelled());
        signal.addEventListener("abort", onAbort, { once: true });
      }
    });
    failure.catch(() => {});

    try {
      const client = await Promise.race([connectAndWait(), failure]);
      log?.debug({ pid: proc.pid, ms: Date.now() - t0 }, "QEMU running");
      return new QemuVirtualMachine(spec, proc, client, paths, log);
    } catch (caught) {
      let err = caught;
      internal.abort();
      qmp?.close();
      // A QMP failure is usually QEMU dying: report the exit (and its stderr) rather than EPIPE.
      const code = caught instanceof HakoError ? caught.code : undefined;
      if (code !== Code.CANCELLED && code !== Code.DEADLINE_EXCEEDED && (await proc.waitExit(500))) err = exitError(proc.exit!);
      const exitedEarly = proc.exit !== undefined;
      await proc.kill();
      await removeFiles(paths);
      const out = await proc.outputText();
      const tail = await fileTail(spec.consoleLog);
      log?.warn({ pid: proc.pid, err: (err as Error).message }, "QEMU start failed; killed it");
      const base =
        err instanceof HakoError
          ? err
          : new HypervisorError(id, `starting QEMU for sandbox ${id} failed: ${(err as Error).message}`, { code: Code.INTERNAL, cause: err });
      // Say what QEMU printed; for a cancelled start that is rarely interesting unless it died on its own.
      if (base instanceof HakoError && (base.code !== Code.CANCELLED || exitedEarly)) {
        throw new HypervisorError(id, `${base.message}${diagnostics(out, tail)}`, { code: base.code, cause: base.cause ?? err });
      }
      throw base;
    } finally {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener("abort", onAbort);
    }
  }
}
