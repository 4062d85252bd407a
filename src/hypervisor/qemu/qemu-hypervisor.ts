// The QEMU variant of the Hypervisor seam: one QEMU process per sandbox VM,
// controlled over QMP. Every path out of start() that fails kills the QEMU it
// spawned (by pid) and removes its sockets and pid file.
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { Code } from "../../protocols/ttrpc/status.js";
import type { QemuConfig } from "../../runtime/config.js";
import { HakoError, HypervisorError } from "../../runtime/errors.js";
import type { Logger } from "../../runtime/logger.js";
import { ksmExecPath } from "../../runtime/paths.js";
import type { AdoptableVm, Hypervisor, VirtualMachine, VmExit, VmSpec } from "../hypervisor.js";
import { buildQemuArgs, type QemuPaths, type Transport } from "./command-line.js";
import { QmpClient } from "./qmp-client.js";
import { AdoptedQemuProcess, QemuProcess, diagnostics, exitText, fileTail, lastLines, printable, sleep, type VmmProcess } from "./vmm-process.js";

export { NSENTER, TailBuffer, fileTail, launchCommand } from "./vmm-process.js";

/** Longest unix socket path Linux accepts (sun_path is 108 bytes with the NUL). */
const MAX_SOCKET_PATH = 107;

export interface QemuHypervisorOptions {
  /** Host TSC kHz for tsc_early_khz (default: /proc/cpuinfo). */
  hostTscKhz?: number;
  /** Overrides the virtio transport derived from the machine type. */
  transport?: Transport;
}

export function vmPaths(runDir: string): QemuPaths {
  return {
    qmpSocket: join(runDir, "qmp.sock"),
    agentSocket: join(runDir, "agent.sock"),
    pidFile: join(runDir, "qemu.pid"),
  };
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
  private readonly proc: VmmProcess;
  private readonly qmp: QmpClient;
  private readonly logger: Logger | undefined;
  private stopping: Promise<VmExit> | undefined;
  private released = false;

  constructor(spec: Pick<VmSpec, "id" | "consoleLog">, proc: VmmProcess, qmp: QmpClient, paths: QemuPaths, logger: Logger | undefined) {
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
      if (!this.stopping && !this.released) {
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

  release(): void {
    this.released = true;
    this.qmp.close();
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
      // With no grace (stop(0)) SIGTERM is the plan, not a fallback worth a warning.
      if (!this.released && graceMs > 0) this.logger?.warn({ pid: proc.pid, graceMs }, "QEMU did not quit over QMP; sending SIGTERM");
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

  async adopt(vm: AdoptableVm, signal?: AbortSignal): Promise<VirtualMachine> {
    const log = this.logger?.child({ sandbox: vm.id });
    const proc = new AdoptedQemuProcess(vm.pid);
    const paths = vmPaths(vm.runDir);
    if (!proc.running) throw new HypervisorError(vm.id, `the cached VM (QEMU pid ${vm.pid}) handed to sandbox ${vm.id} is not running`, { code: Code.UNAVAILABLE });
    try {
      const qmp = await QmpClient.connect({ socketPath: paths.qmpSocket, id: vm.id, deadline: Date.now() + 10_000, signal, logger: log });
      const st = await qmp.execute<{ status: string }>("query-status");
      if (st.status !== "running") {
        qmp.close();
        throw new HypervisorError(vm.id, `the cached VM handed to sandbox ${vm.id} is in state "${st.status}" instead of running`, { code: Code.INTERNAL });
      }
      // Not our child: its monitor closing is the first sign that it exited.
      qmp.once("close", () => setTimeout(() => proc.check(), 20));
      log?.debug({ pid: vm.pid }, "adopted a cached VM");
      return new QemuVirtualMachine(vm, proc, qmp, paths, log);
    } catch (err) {
      // A cached VM that cannot be taken over is of no use to anybody.
      await proc.kill();
      await removeFiles(paths);
      throw err;
    }
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
    const proc = await QemuProcess.spawn(id, this.qemu.path, args, {
      netnsPath,
      glibcTunables: this.qemu.glibc_tunables,
      ksm: { exec: ksmExecPath(), mergeAll: this.qemu.merge_all_memory },
    });
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
