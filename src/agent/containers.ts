// Containers in the guest, run by crun from the OCI spec the host sends.
// `crun run` stays in the foreground as the parent of the container's init,
// so the agent learns the exit status from crun's own exit; `crun exec` does
// the same for extra processes.
import { mkdirSync, writeFileSync, readFileSync, rmSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { Code } from "../protocols/ttrpc/status.js";
import { AgentError } from "../runtime/errors.js";
import { GuestProcess, type ExitInfo } from "./guest-process.js";
import { readCgroupStats, type CgroupStats } from "./cgroup-stats.js";
import { OomWatcher } from "./oom-watcher.js";
import type { Logger } from "../runtime/logger.js";
import { commandErrorText } from "../runtime/command.js";
import { untilSeen } from "../runtime/watch-poll.js";
import { runCommand as run } from "./helper-shell.js";

export const CRUN = process.env.HAKO_CRUN ?? "/usr/bin/crun";
export const CONTAINERS_DIR = "/run/hako/containers";
const CRUN_ROOT = "/run/crun";

interface OciProcess {
  terminal?: boolean;
  args?: string[];
  env?: string[];
  cwd?: string;
  consoleSize?: { height: number; width: number };
  [k: string]: unknown;
}

interface OciSpec {
  process?: OciProcess;
  root?: { path: string; readonly?: boolean };
  linux?: { cgroupsPath?: string; [k: string]: unknown };
  [k: string]: unknown;
}

export type ContainerStatus = "created" | "running" | "paused" | "stopped";

class Container {
  status: ContainerStatus = "created";
  init: GuestProcess | undefined;
  readonly execs = new Map<string, GuestProcess>();
  readonly execPids = new Map<string, number>();
  initPid = 0;

  constructor(
    readonly id: string,
    readonly dir: string,
    readonly spec: OciSpec,
    readonly terminal: boolean,
  ) {}

  get cgroupPath(): string {
    const p = this.spec.linux?.cgroupsPath ?? `/hako/${this.id}`;
    return join("/sys/fs/cgroup", p);
  }
}

function notFound(what: string, id: string): AgentError {
  return new AgentError(id, `${what} ${id} not found in the guest`, { code: Code.NOT_FOUND });
}

function readPidFile(path: string): number {
  try {
    return Number.parseInt(readFileSync(path, "utf8").trim(), 10) || 0;
  } catch {
    return 0;
  }
}

/**
 * Waits until crun has written the container's pid file, crun exited, or
 * the timeout. Woken by inotify on the bundle directory rather than a tight
 * poll: on the guest's one vCPU under TCG every poll (a timer, a failed read
 * and its exception) is taken from crun itself. A slow poll stays as a
 * safety net.
 */
async function waitForPidFile(path: string, proc: GuestProcess, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  return untilSeen(
    dirname(path),
    () => {
      const pid = readPidFile(path);
      if (pid > 0) return pid;
      return proc.exitInfo || Date.now() > deadline ? 0 : undefined;
    },
    100,
    proc.exited,
  );
}

export class ContainerManager {
  private readonly containers = new Map<string, Container>();
  readonly oom = new OomWatcher();

  constructor(private readonly log: Logger) {
    mkdirSync(CONTAINERS_DIR, { recursive: true });
  }

  private get(id: string): Container {
    const c = this.containers.get(id);
    if (!c) throw notFound("container", id);
    return c;
  }

  process(id: string, execId: string): GuestProcess {
    const c = this.get(id);
    if (!execId || execId === id) {
      if (!c.init) throw new AgentError(id, `container ${id} has not been started`, { code: Code.FAILED_PRECONDITION });
      return c.init;
    }
    const p = c.execs.get(execId);
    if (!p) throw notFound(`exec process ${execId} of container`, id);
    return p;
  }

  create(id: string, specJson: string, terminal: boolean): void {
    if (this.containers.has(id)) throw new AgentError(id, `container ${id} already exists in the guest`, { code: Code.ALREADY_EXISTS });
    let spec: OciSpec;
    try {
      spec = JSON.parse(specJson) as OciSpec;
    } catch (err) {
      throw new AgentError(id, `OCI spec of container ${id} is not valid JSON: ${(err as Error).message}`, { code: Code.INVALID_ARGUMENT });
    }
    if (!spec.root?.path || !existsSync(spec.root.path))
      throw new AgentError(id, `root filesystem ${spec.root?.path ?? "(none)"} of container ${id} is missing in the guest`, { code: Code.INVALID_ARGUMENT });
    if (!spec.process?.args?.length) throw new AgentError(id, `OCI spec of container ${id} has no process.args`, { code: Code.INVALID_ARGUMENT });
    const dir = join(CONTAINERS_DIR, id);
    mkdirSync(dir, { recursive: true });
    // The agent owns the terminal (node-pty), so crun sees a plain process.
    spec.process.terminal = false;
    writeFileSync(join(dir, "config.json"), JSON.stringify(spec));
    const c = new Container(id, dir, spec, terminal);
    this.oom.prepare(c.cgroupPath);
    this.containers.set(id, c);
    this.log.info({ container: id }, "container created");
  }

  async start(id: string): Promise<number> {
    const c = this.get(id);
    if (c.init) throw new AgentError(id, `container ${id} was already started`, { code: Code.FAILED_PRECONDITION });
    const pidFile = join(c.dir, "init.pid");
    const size = c.spec.process?.consoleSize;
    const proc = new GuestProcess(CRUN, ["--root", CRUN_ROOT, "run", "--bundle", c.dir, "--pid-file", pidFile, id], {
      terminal: c.terminal,
      cols: size?.width,
      rows: size?.height,
    });
    c.init = proc;
    c.status = "running";
    void proc.exited.then((e) => this.onInitExit(c, e));
    c.initPid = await waitForPidFile(pidFile, proc, 30_000);
    if (c.initPid === 0 && proc.exitInfo && proc.exitInfo.status !== 0) {
      // crun failed before the container ran: surface its error text (left in the buffers).
      await new Promise((r) => setTimeout(r, 20));
      const text = `${proc.stderr.peekText()}${c.terminal ? proc.stdout.peekText() : ""}`.trim();
      const lines = text.split("\n").slice(-3).join(" | ");
      throw new AgentError(id, `crun could not start container ${id} (status ${proc.exitInfo.status}): ${lines || "no error output"}`, { code: Code.FAILED_PRECONDITION });
    }
    if (c.initPid > 0) this.oom.watch(id, c.cgroupPath);
    this.log.info({ container: id, pid: c.initPid }, "container started");
    return c.initPid;
  }

  private async onInitExit(c: Container, e: ExitInfo): Promise<void> {
    c.status = "stopped";
    // A kill the watch has not reported yet; the watch itself if the process
    // ended before start() set it up (crun has removed the cgroup by now).
    if (c.initPid > 0 || readPidFile(join(c.dir, "init.pid")) > 0) {
      this.oom.watch(c.id, c.cgroupPath);
      this.oom.settleExit(c.id);
    }
    this.log.info({ container: c.id, status: e.status }, "container init exited");
    // Any exec still running dies with the container's pid namespace.
    await run(CRUN, ["--root", CRUN_ROOT, "delete", "--force", c.id]).catch(() => undefined);
  }

  async exec(id: string, execId: string, processJson: string, terminal: boolean): Promise<number> {
    const c = this.get(id);
    if (c.status !== "running") throw new AgentError(id, `container ${id} is not running (${c.status})`, { code: Code.FAILED_PRECONDITION });
    if (c.execs.has(execId)) throw new AgentError(id, `exec ${execId} already exists in container ${id}`, { code: Code.ALREADY_EXISTS });
    let p: OciProcess;
    try {
      p = JSON.parse(processJson) as OciProcess;
    } catch (err) {
      throw new AgentError(id, `exec ${execId}: process is not valid JSON: ${(err as Error).message}`, { code: Code.INVALID_ARGUMENT });
    }
    if (!p.args?.length) throw new AgentError(id, `exec ${execId}: process.args is empty`, { code: Code.INVALID_ARGUMENT });
    p.terminal = false;
    const procFile = join(c.dir, `exec-${execId}.json`);
    const pidFile = join(c.dir, `exec-${execId}.pid`);
    writeFileSync(procFile, JSON.stringify(p));
    const proc = new GuestProcess(CRUN, ["--root", CRUN_ROOT, "exec", "--process", procFile, "--pid-file", pidFile, id], {
      terminal,
      cols: p.consoleSize?.width,
      rows: p.consoleSize?.height,
    });
    c.execs.set(execId, proc);
    const pid = await waitForPidFile(pidFile, proc, 30_000);
    c.execPids.set(execId, pid);
    return pid;
  }

  async signal(id: string, execId: string, signal: number, all: boolean): Promise<void> {
    const c = this.get(id);
    if (!execId || execId === id) {
      if (!c.init || c.init.exitInfo) throw new AgentError(id, `container ${id} is not running`, { code: Code.NOT_FOUND });
      if (all) {
        await run(CRUN, ["--root", CRUN_ROOT, "kill", "--all", id, String(signal)]).catch(() => undefined);
        return;
      }
      try {
        process.kill(c.initPid, signal);
      } catch (err) {
        throw new AgentError(id, `cannot signal container ${id}: ${(err as Error).message}`, { code: Code.NOT_FOUND });
      }
      return;
    }
    const p = c.execs.get(execId);
    const pid = c.execPids.get(execId) ?? 0;
    if (!p || p.exitInfo || pid === 0) throw notFound(`running exec process ${execId} of container`, id);
    try {
      process.kill(pid, signal);
    } catch (err) {
      throw new AgentError(id, `cannot signal exec ${execId}: ${(err as Error).message}`, { code: Code.NOT_FOUND });
    }
  }

  async pause(id: string): Promise<void> {
    const c = this.get(id);
    await this.crun(id, ["pause", id]);
    c.status = "paused";
  }

  async resume(id: string): Promise<void> {
    const c = this.get(id);
    await this.crun(id, ["resume", id]);
    c.status = "running";
  }

  /**
   * True if the kernel OOM-killed a process of this container. A running
   * container's counter is read now (the inotify event can come late under a
   * slow guest); a stopped one's kills were settled when its init exited.
   */
  oomKilled(id: string): boolean {
    if (this.containers.get(id)?.status !== "stopped") this.oom.check(id);
    return this.oom.sawKill(id);
  }

  stats(id: string): CgroupStats {
    const c = this.get(id);
    return readCgroupStats(c.cgroupPath);
  }

  async remove(id: string, timeoutSec: number): Promise<void> {
    const c = this.containers.get(id);
    if (!c) return;
    if (c.init && !c.init.exitInfo) {
      if (timeoutSec > 0) {
        await this.signal(id, "", 15, true).catch(() => undefined);
        await Promise.race([c.init.exited, new Promise((r) => setTimeout(r, timeoutSec * 1000))]);
      }
      if (!c.init.exitInfo) await run(CRUN, ["--root", CRUN_ROOT, "kill", "--all", id, "9"]).catch(() => undefined);
      await Promise.race([c.init.exited, new Promise((r) => setTimeout(r, 5000))]);
    }
    await run(CRUN, ["--root", CRUN_ROOT, "delete", "--force", id]).catch(() => undefined);
    rmSync(c.dir, { recursive: true, force: true });
    this.oom.unwatch(id);
    this.containers.delete(id);
    this.log.info({ container: id }, "container removed");
  }

  async removeAll(): Promise<void> {
    for (const id of [...this.containers.keys()]) await this.remove(id, 0);
  }

  private async crun(id: string, args: string[]): Promise<void> {
    try {
      await run(CRUN, ["--root", CRUN_ROOT, ...args]);
    } catch (err) {
        throw new AgentError(id, `crun ${args[0]} ${id} failed: ${commandErrorText(err)}`, { code: Code.FAILED_PRECONDITION });
    }
  }
}
