// What one shim process manages: the sandboxes (VMs) of its group and the
// containerd tasks in them. Protocol-free: task-service.ts maps the ttRPC
// Task API onto this, and events leave through the TaskEvents sink.
import { Code, TtrpcError } from "../protocols/ttrpc/status.js";
import { createHypervisor } from "../hypervisor/index.js";
import { chooseAccel } from "../runtime/accel.js";
import type { HakoConfig } from "../runtime/config.js";
import { RuntimeError } from "../runtime/errors.js";
import type { Logger } from "../runtime/logger.js";
import { loadBundle, networkNamespacePath, sharesHostPidNamespace } from "../runtime/oci-spec.js";
import { Sandbox } from "../runtime/sandbox.js";
import { sandboxSize, type SandboxSize } from "../runtime/sandbox-sizing.js";
import { pumpInput, pumpOutput } from "../runtime/stdio-relay.js";
import type { CgroupStatsLike } from "./metrics.js";
import { mountRootfs, unmountRootfs, type RootfsMount } from "../resource/rootfs/rootfs-mount.js";
import { endOutputs, openProcessIO, type ProcessIO } from "./stdio.js";

export const SANDBOX_ID_ANNOTATION = "io.kubernetes.cri.sandbox-id";
/** "sandbox" for a pod's infra (pause) container, "container" for the others. */
export const CONTAINER_TYPE_ANNOTATION = "io.kubernetes.cri.container-type";

/** Exit status reported for a process that failed to start. */
export const FAILED_START_STATUS = 255;

export type TaskStatus = "created" | "running" | "paused" | "stopped";

export interface StdioPaths {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

export interface TaskEvents {
  create(e: { containerId: string; bundle: string; rootfs: RootfsMount[]; io: StdioPaths; pid: number }): void;
  start(e: { containerId: string; pid: number }): void;
  exit(e: { containerId: string; id: string; pid: number; exitStatus: number; exitedAt: Date }): void;
  delete(e: { containerId: string; id: string; pid: number; exitStatus: number; exitedAt: Date }): void;
  execAdded(e: { containerId: string; execId: string }): void;
  execStarted(e: { containerId: string; execId: string; pid: number }): void;
  paused(containerId: string): void;
  resumed(containerId: string): void;
  /** Resolves once containerd has the event (or it was dropped). */
  oom(containerId: string): Promise<void>;
}

class ShimProcess {
  status: TaskStatus = "created";
  exitStatus = 0;
  exitedAt: Date | undefined;
  io: ProcessIO | undefined;
  stopInput: (() => void) | undefined;
  readonly exited: Promise<void>;
  private resolveExited!: () => void;

  constructor(
    readonly containerId: string,
    readonly execId: string,
    readonly stdio: StdioPaths,
    readonly processJson = "",
  ) {
    this.exited = new Promise((r) => (this.resolveExited = r));
  }

  markExited(status: number): boolean {
    if (this.status === "stopped") return false;
    this.status = "stopped";
    this.exitStatus = status;
    this.exitedAt = new Date();
    this.resolveExited();
    return true;
  }
}

/**
 * "container": a process tree in the guest. "pod-sandbox": CRI's infra
 * (pause) container: nothing runs for it in the guest; the VM is the pod, and
 * its task lives until the pod is stopped.
 */
type ContainerKind = "container" | "pod-sandbox";

class ShimContainer {
  readonly execs = new Map<string, ShimProcess>();
  constructor(
    readonly id: string,
    readonly bundle: string,
    readonly sandbox: Sandbox,
    readonly ownsSandbox: boolean,
    readonly init: ShimProcess,
    readonly kind: ContainerKind,
  ) {}
  /**
   * Set once a TaskOOM was published for this container (by the long-poll or
   * the exit path); resolves when containerd has it: the init's exit waits.
   */
  oomDelivered: Promise<void> | undefined;
}

/** How long an OOM-killed container's exit waits for its TaskOOM to reach containerd. */
const OOM_EVENT_WAIT_MS = 2000;

/** What only a real container can do: a pod sandbox has no processes of its own. */
function refuseOnPodSandbox(c: ShimContainer, action: string): void {
  if (c.kind === "pod-sandbox")
    throw new RuntimeError(Code.FAILED_PRECONDITION, c.id, `${c.id} is a pod sandbox with no processes of its own: ${action} one of its containers instead`);
}

/**
 * The error of a sandbox start given up because containerd's Create ended
 * first: its deadline passed (DEADLINE_EXCEEDED) or its connection closed
 * (CANCELLED). The sandbox is torn down by then.
 */
export function abandonedStart(id: string, reason: unknown, cause: unknown): RuntimeError {
  const code = reason instanceof TtrpcError ? reason.code : Code.CANCELLED;
  const why = code === Code.DEADLINE_EXCEEDED ? "its deadline passed" : "the caller went away";
  return new RuntimeError(code, id, `sandbox ${id}: start given up before its VM was up: ${why}; the VM and its resources are removed`, {
    hint: "give RunPodSandbox more time (kubelet --runtime-request-timeout) or start fewer pods at once; `hako trace` shows where the start was",
    cause,
  });
}

function notFound(id: string, what = "task"): RuntimeError {
  return new RuntimeError(Code.NOT_FOUND, id, `${what} ${id} not found`);
}

export class ShimRuntime {
  private readonly containers = new Map<string, ShimContainer>();
  private readonly sandboxes = new Map<string, Sandbox>();
  private readonly watched = new WeakSet<Sandbox>();

  constructor(
    private readonly cfg: HakoConfig,
    private readonly log: Logger,
    private readonly events: TaskEvents,
  ) {}

  get isEmpty(): boolean {
    return this.containers.size === 0;
  }

  /** Host pid reported for every task: the VMM of its sandbox (as Kata does). */
  private pidOf(c: ShimContainer): number {
    return c.sandbox.vm?.pid ?? 0;
  }

  private container(id: string): ShimContainer {
    const c = this.containers.get(id);
    if (!c) throw notFound(id);
    return c;
  }

  private process(id: string, execId: string): ShimProcess {
    const c = this.container(id);
    if (!execId) return c.init;
    const p = c.execs.get(execId);
    if (!p) throw notFound(execId, `exec process of ${id}:`);
    return p;
  }

  /** Creates a task; `signal` (the caller's deadline or its going away) abandons a sandbox's start. */
  async create(req: { id: string; bundle: string; rootfs: RootfsMount[]; stdio: StdioPaths }, signal?: AbortSignal): Promise<number> {
    const { id, bundle } = req;
    if (this.containers.has(id)) throw new RuntimeError(Code.ALREADY_EXISTS, id, `task ${id} already exists`);
    const mounted = await mountRootfs(id, bundle, req.rootfs);
    let sandbox: Sandbox | undefined;
    let owns = false;
    let io: ProcessIO | undefined;
    try {
      const b = loadBundle(id, bundle);
      const annotations = b.spec.annotations ?? {};
      const sid = annotations[SANDBOX_ID_ANNOTATION];
      const kind: ContainerKind = annotations[CONTAINER_TYPE_ANNOTATION] === "sandbox" ? "pod-sandbox" : "container";
      sandbox = sid && sid !== id ? this.sandboxes.get(sid) : undefined;
      if (!sandbox && kind === "container" && annotations[CONTAINER_TYPE_ANNOTATION] === "container")
        throw new RuntimeError(Code.NOT_FOUND, id, `pod sandbox ${sid ?? "(none)"} of container ${id} is not running in this shim`, {
          hint: "create the container in a running pod (RunPodSandbox first)",
        });
      if (!sandbox) {
        owns = true;
        sandbox = await this.bootSandbox(id, bundle, {
          size: sandboxSize(id, annotations, { vcpus: this.cfg.hypervisor.qemu.default_vcpus, memoryMiB: this.cfg.hypervisor.qemu.default_memory }),
          hostname: kind === "pod-sandbox" ? b.spec.hostname : undefined,
          // The pod netns CNI filled (CRI names it in the infra container's spec).
          netnsPath: networkNamespacePath(b.spec),
          hostPid: kind === "pod-sandbox" && sharesHostPidNamespace(b.spec),
        }, signal);
      }
      io = openProcessIO(id, req.stdio);
      if (kind === "container") {
        if (req.stdio.terminal) b.spec.process = { ...b.spec.process, terminal: true };
        await sandbox.createContainer(id, b, req.stdio.terminal);
      }
      const init = new ShimProcess(id, "", req.stdio);
      init.io = io;
      const c = new ShimContainer(id, bundle, sandbox, owns, init, kind);
      this.containers.set(id, c);
      this.watchSandbox(sandbox);
      const pid = this.pidOf(c);
      this.events.create({ containerId: id, bundle, rootfs: req.rootfs, io: req.stdio, pid });
      return pid;
    } catch (err) {
      io?.close();
      if (owns && sandbox) {
        await sandbox.destroy().catch(() => undefined);
        this.sandboxes.delete(id);
      } else if (sandbox) await sandbox.removeContainer(id).catch(() => undefined);
      if (mounted) await unmountRootfs(id, bundle).catch(() => undefined);
      throw err;
    }
  }

  /** Boots the VM of a new sandbox with its size, hostname and (from the pod netns) network. */
  private async bootSandbox(
    id: string,
    bundle: string,
    opts: { size: SandboxSize; hostname: string | undefined; netnsPath: string | undefined; hostPid: boolean },
    signal?: AbortSignal,
  ): Promise<Sandbox> {
    const probe = await chooseAccel(this.cfg, this.log);
    const sb = new Sandbox(id, {
      config: this.cfg,
      hypervisor: createHypervisor(this.cfg, this.log),
      accel: probe.accel,
      logger: this.log.child({ sandbox: id }),
      bundle,
      ...opts,
    });
    sb.claim();
    this.sandboxes.set(id, sb);
    try {
      await sb.start(signal);
    } catch (err) {
      this.sandboxes.delete(id);
      await sb.destroy().catch(() => undefined);
      if (signal?.aborted) throw abandonedStart(id, signal.reason, err);
      throw err;
    }
    void this.forwardOomEvents(sb);
    return sb;
  }

  /**
   * The agent reports every OOM kill in a container's cgroup (GetOOMEvent
   * long-polls); each becomes a TaskOOM event, which CRI turns into the
   * container's reason "OOMKilled". Ends with the agent connection.
   */
  private async forwardOomEvents(sb: Sandbox): Promise<void> {
    const agent = sb.agent;
    if (!agent) return;
    let closed = false;
    void agent.closed.then(() => (closed = true));
    while (!closed) {
      try {
        const ev = await agent.agent.getOOMEvent({}, { timeoutMs: 0 });
        const c = this.containers.get(ev.containerId);
        if (c?.sandbox === sb) this.reportOom(c);
      } catch (err) {
        if (closed || sb.agent !== agent) return;
        if (err instanceof TtrpcError && err.code === Code.UNIMPLEMENTED) return;
        this.log.debug({ err, sandbox: sb.id }, "GetOOMEvent failed; retrying");
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  private reportOom(c: ShimContainer): void {
    if (c.oomDelivered && c.init.status === "stopped") return; // the exit path already told
    this.log.info({ sandbox: c.sandbox.id, container: c.id }, "container OOM-killed in the guest");
    c.oomDelivered = this.events.oom(c.id);
  }

  /** When the VM dies under us, every task in it has exited. */
  private watchSandbox(sb: Sandbox): void {
    const vm = sb.vm;
    if (!vm || this.watched.has(sb)) return;
    this.watched.add(sb);
    void vm.exited.then((e) => {
      const status = e.signal ? 128 + 9 : e.code && e.code > 0 ? e.code : 255;
      for (const c of this.containers.values()) {
        if (c.sandbox !== sb) continue;
        for (const p of [c.init, ...c.execs.values()]) void this.finish(c, p, status);
      }
    });
  }

  private async finish(c: ShimContainer, p: ShimProcess, status: number, drain?: Promise<unknown>): Promise<void> {
    if (p.status === "stopped") return;
    if (drain) await Promise.race([drain, new Promise((r) => setTimeout(r, 5000).unref())]);
    // CRI takes the exit from Wait and the reason "OOMKilled" from the TaskOOM
    // event, on separate paths: an exit answered first is read as "Error"
    // until the event catches up. So the event goes first.
    if (p === c.init && c.oomDelivered) await Promise.race([c.oomDelivered, new Promise((r) => setTimeout(r, OOM_EVENT_WAIT_MS).unref())]);
    p.stopInput?.();
    if (!p.markExited(status)) return;
    if (p.io) await endOutputs(p.io);
    this.events.exit({ containerId: c.id, id: p.execId || c.id, pid: this.pidOf(c), exitStatus: p.exitStatus, exitedAt: p.exitedAt! });
  }

  private startIO(c: ShimContainer, p: ShimProcess): Promise<unknown> {
    const agent = c.sandbox.requireAgent().agent;
    const io = p.io;
    const out = [
      pumpOutput(agent, "stdout", c.id, p.execId, io?.stdout).catch(() => undefined),
      pumpOutput(agent, "stderr", c.id, p.execId, io?.stderr).catch(() => undefined),
    ];
    if (io?.stdin) p.stopInput = pumpInput(agent, c.id, p.execId, io.stdin);
    else if (!p.stdio.terminal) void agent.closeStdin({ containerId: c.id, execId: p.execId }).catch(() => undefined);
    return Promise.all(out);
  }

  async start(id: string, execId: string): Promise<number> {
    const c = this.container(id);
    const p = this.process(id, execId);
    if (p.status !== "created") throw new RuntimeError(Code.FAILED_PRECONDITION, id, `${execId || id} is ${p.status}, not created`);
    if (c.kind === "pod-sandbox") {
      p.status = "running";
      this.events.start({ containerId: id, pid: this.pidOf(c) });
      return this.pidOf(c);
    }
    const agent = c.sandbox.requireAgent().agent;
    try {
      if (execId) await agent.execProcess({ containerId: id, execId, processJson: p.processJson, terminal: p.stdio.terminal });
      else await c.sandbox.startContainer(id);
    } catch (err) {
      await this.failStart(c, p);
      throw err;
    }
    p.status = "running";
    const drain = this.startIO(c, p);
    void agent
      .waitProcess({ containerId: id, execId })
      .then((w) => {
        // TaskOOM before TaskExit, whichever the agent noticed first: CRI
        // reads the reason "OOMKilled" from it once the container has exited.
        if (w.oomKilled && !c.oomDelivered) this.reportOom(c);
        return this.finish(c, p, w.status, drain);
      })
      .catch((err: unknown) => this.log.debug({ err, container: id, execId }, "WaitProcess ended"));
    const pid = this.pidOf(c);
    if (execId) this.events.execStarted({ containerId: id, execId, pid });
    else this.events.start({ containerId: id, pid });
    return pid;
  }

  /**
   * A process that could not start is STOPPED (status 255), so containerd can
   * delete it; a container's own VM is stopped at once rather than left idle.
   */
  private async failStart(c: ShimContainer, p: ShimProcess): Promise<void> {
    if (!p.markExited(FAILED_START_STATUS)) return;
    if (p.io) await endOutputs(p.io);
    if (!p.execId) {
      if (c.ownsSandbox) await c.sandbox.destroy().catch((err: unknown) => this.log.warn({ err }, "sandbox teardown failed"));
      else await c.sandbox.removeContainer(c.id).catch(() => undefined);
    }
    this.events.exit({ containerId: c.id, id: p.execId || c.id, pid: this.pidOf(c), exitStatus: p.exitStatus, exitedAt: p.exitedAt! });
  }

  state(id: string, execId: string): { pid: number; status: TaskStatus; bundle: string; stdio: StdioPaths; exitStatus: number; exitedAt: Date | undefined } {
    const c = this.container(id);
    const p = this.process(id, execId);
    return { pid: this.pidOf(c), status: p.status, bundle: c.bundle, stdio: p.stdio, exitStatus: p.exitStatus, exitedAt: p.exitedAt };
  }

  async kill(id: string, execId: string, signal: number, all: boolean): Promise<void> {
    const c = this.container(id);
    const p = this.process(id, execId);
    if (p.status === "stopped") throw new RuntimeError(Code.NOT_FOUND, id, `process ${execId || id} has already exited`);
    if (p.status === "created") {
      // Never started: nothing runs in the guest yet; it simply ends.
      await this.finish(c, p, 128 + signal);
      return;
    }
    if (c.kind === "pod-sandbox") {
      // Signalling the pod's infra container stops the pod: the VM goes, and
      // with it every container still in it (CRI has stopped them already).
      // Like a real kill, this returns before the exit: CRI's Wait then sees
      // the exit and deletes the task, which waits for the teardown.
      await this.finish(c, p, 128 + signal);
      void c.sandbox.destroy().catch((err: unknown) => this.log.warn({ err, sandbox: c.sandbox.id }, "pod teardown failed"));
      return;
    }
    await c.sandbox.requireAgent().agent.signalProcess({ containerId: id, execId, signal, all });
  }

  exec(id: string, execId: string, stdio: StdioPaths, processJson: string): void {
    const c = this.container(id);
    refuseOnPodSandbox(c, "exec into");
    if (c.execs.has(execId)) throw new RuntimeError(Code.ALREADY_EXISTS, id, `exec ${execId} already exists in ${id}`);
    if (c.init.status !== "running") throw new RuntimeError(Code.FAILED_PRECONDITION, id, `container ${id} is not running`);
    const p = new ShimProcess(id, execId, stdio, processJson);
    p.io = openProcessIO(`${id}/${execId}`, stdio);
    c.execs.set(execId, p);
    this.events.execAdded({ containerId: id, execId });
  }

  async wait(id: string, execId: string): Promise<{ exitStatus: number; exitedAt: Date }> {
    const p = this.process(id, execId);
    await p.exited;
    return { exitStatus: p.exitStatus, exitedAt: p.exitedAt! };
  }

  async delete(id: string, execId: string): Promise<{ pid: number; exitStatus: number; exitedAt: Date }> {
    const c = this.container(id);
    const p = this.process(id, execId);
    if (p.status !== "stopped" && p.status !== "created")
      throw new RuntimeError(Code.FAILED_PRECONDITION, id, `${execId || id} is ${p.status}: kill it before deleting`);
    if (p.status === "created") await this.finish(c, p, 0);
    const res = { pid: this.pidOf(c), exitStatus: p.exitStatus, exitedAt: p.exitedAt ?? new Date() };
    if (execId) {
      c.execs.delete(execId);
      return res;
    }
    for (const e of c.execs.values()) e.io?.close();
    this.containers.delete(id);
    if (c.ownsSandbox) {
      await c.sandbox.destroy();
      this.sandboxes.delete(c.sandbox.id);
    } else await c.sandbox.removeContainer(id);
    await unmountRootfs(id, c.bundle);
    this.events.delete({ containerId: id, id, pid: res.pid, exitStatus: res.exitStatus, exitedAt: res.exitedAt });
    return res;
  }

  async pids(id: string): Promise<number[]> {
    const c = this.container(id);
    if (c.kind === "pod-sandbox" || c.init.status === "stopped" || c.init.status === "created") return [];
    const st = await c.sandbox.requireAgent().agent.statsContainer({ containerId: id });
    return st.processIds;
  }

  async pause(id: string): Promise<void> {
    const c = this.container(id);
    refuseOnPodSandbox(c, "pause");
    if (c.init.status !== "running") throw new RuntimeError(Code.FAILED_PRECONDITION, id, `container ${id} is ${c.init.status}, not running`);
    await c.sandbox.requireAgent().agent.pauseContainer({ containerId: id });
    c.init.status = "paused";
    this.events.paused(id);
  }

  async resume(id: string): Promise<void> {
    const c = this.container(id);
    if (c.init.status !== "paused") throw new RuntimeError(Code.FAILED_PRECONDITION, id, `container ${id} is ${c.init.status}, not paused`);
    await c.sandbox.requireAgent().agent.resumeContainer({ containerId: id });
    c.init.status = "running";
    this.events.resumed(id);
  }

  async resizePty(id: string, execId: string, width: number, height: number): Promise<void> {
    const c = this.container(id);
    this.process(id, execId);
    await c.sandbox.requireAgent().agent.ttyWinResize({ containerId: id, execId, column: width, row: height });
  }

  async closeIO(id: string, execId: string, stdin: boolean): Promise<void> {
    const c = this.container(id);
    const p = this.process(id, execId);
    if (!stdin) return;
    p.stopInput?.();
    p.io?.stdin?.destroy();
    await c.sandbox.requireAgent().agent.closeStdin({ containerId: id, execId });
  }

  async stats(id: string): Promise<CgroupStatsLike> {
    const c = this.container(id);
    refuseOnPodSandbox(c, "ask for the stats of");
    return c.sandbox.requireAgent().agent.statsContainer({ containerId: id });
  }

  connectInfo(id: string): { taskPid: number } {
    return { taskPid: this.pidOf(this.container(id)) };
  }

  /** Tears everything down (shim shutdown or signal). */
  async destroyAll(): Promise<void> {
    for (const c of this.containers.values()) {
      for (const p of [c.init, ...c.execs.values()]) p.io?.close();
      await unmountRootfs(c.id, c.bundle).catch(() => undefined);
    }
    this.containers.clear();
    for (const sb of this.sandboxes.values()) await sb.destroy().catch(() => undefined);
    this.sandboxes.clear();
  }
}
