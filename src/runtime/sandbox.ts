// A sandbox is one VM: its QEMU process, its agent connection, its share
// directory and its state directory. Containers run inside it.
import { randomBytes } from "node:crypto";
import { mkdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { Code } from "../protocols/ttrpc/status.js";
import type { Hypervisor, VirtualMachine, VmNetwork } from "../hypervisor/hypervisor.js";
import { PodNetwork } from "../resource/network/pod-network.js";
import { VirtioNinePShare } from "../resource/sharefs/virtio-9p.js";
import { removeTree } from "../resource/mounts.js";
import type { ShareFs } from "../resource/sharefs/share-fs.js";
import { allSettledThenThrow } from "./settled.js";
import type { HakoConfig } from "./config.js";
import { connectAgentWhenReady, type AgentClient } from "./agent-client.js";
import { RuntimeError } from "./errors.js";
import type { Logger } from "./logger.js";
import type { SandboxSize } from "./sandbox-sizing.js";
import { archiveTrace, traceFromState } from "./trace.js";
import { TCG_AGENT_PARAMS, cloneSpec, findTemplate, guestBoot, missingTemplateWarning, templateGuestNic } from "./factory.js";
import { requestTemplateBuild } from "./template-build.js";
import { claimCachedVm, moveCachedTaps } from "./vm-cache.js";
import { bindMountsToShare, guestSpec, type Bundle } from "./oci-spec.js";
import { configureGuestNetwork } from "./sandbox-network.js";
import { startSlotsFor, type StartSlot } from "./start-slots.js";
import { killRecordedVmm, pidMatches, readState, sandboxDir, writeState, type SandboxState } from "./state.js";

/**
 * After its VM is up, a sandbox keeps its start slot for its first container
 * only if that container comes within this time: under CRI the first
 * CreateContainer follows RunPodSandbox at once unless kubelet pulls an image
 * first, which can take minutes, and the slot is not the pull's.
 */
const START_SLOT_GRACE_MS = 3_000;

export interface SandboxOptions {
  config: HakoConfig;
  hypervisor: Hypervisor;
  accel: "kvm" | "tcg";
  /** Bound to this sandbox (`sandbox: id`) by the caller. */
  logger: Logger;
  bundle: string;
  /** VM size; default: the configured default_vcpus / default_memory. */
  size?: SandboxSize;
  /** Guest hostname (a pod's hostname from CRI); default: the sandbox id. */
  hostname?: string;
  /**
   * Pod network namespace (a path, e.g. /var/run/netns/cni-…) that CNI set up:
   * its interfaces, routes and static neighbours are carried into the VM
   * (tcfilter model). Absent: the VM has no NIC.
   */
  netnsPath?: string;
  /**
   * The pod shares the host's pid namespace (CRI's NODE mode, `hostPID`: its
   * infra container's spec has no pid namespace). The VM is the pod's host,
   * so containers that join the sandbox's pid namespace run in the guest's
   * own; otherwise in the pod's, which the agent makes (GUEST_POD_PID_NS).
   */
  hostPid?: boolean;
}

export class Sandbox {
  readonly dir: string;
  readonly state: SandboxState;
  vm: VirtualMachine | undefined;
  agent: AgentClient | undefined;
  share: ShareFs | undefined;
  network: PodNetwork | undefined;
  private readonly t0 = Date.now();
  private stopped = false;
  private destroying: Promise<void> | undefined;
  /** Held from the start of the VM until the first container has started (or failed to). */
  private startSlot: StartSlot | undefined;

  constructor(
    readonly id: string,
    private readonly opts: SandboxOptions,
  ) {
    this.dir = sandboxDir(opts.config.runtime.state_dir, id);
    this.state = {
      id,
      bundle: opts.bundle,
      status: "creating",
      ownerPid: process.pid,
      vmmPid: 0,
      guestPid: 0,
      created: new Date().toISOString(),
      accel: opts.accel,
      timeline: {},
    };
  }

  private consoleLogPath: string | undefined;

  get consoleLog(): string {
    return this.consoleLogPath ?? join(this.dir, "console.log");
  }

  mark(phase: string): void {
    this.state.timeline![phase] = Date.now() - this.t0;
  }

  /** Marks a phase only the first time (a pod's later containers do not move it). */
  private markFirst(phase: string): void {
    if (this.state.timeline![phase] === undefined) this.mark(phase);
  }

  save(): void {
    writeState(this.dir, this.state);
  }

  /** Claims the state directory; fails if a live sandbox already has this id. */
  claim(): void {
    if (existsSync(this.dir)) {
      const old = readState(this.dir);
      if (old && (pidMatches(old.ownerPid, "hako") || pidMatches(old.vmmPid, "qemu")))
        throw new RuntimeError(Code.ALREADY_EXISTS, this.id, `container ${this.id} already exists`, { hint: "pick another id or `hako delete -f` it" });
      throw new RuntimeError(Code.ALREADY_EXISTS, this.id, `stale state of ${this.id} exists at ${this.dir}`, { hint: `run \`hako delete -f ${this.id}\`` });
    }
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.save();
  }

  /**
   * Boots the VM (or restores a clone, or takes one from the VM cache) and
   * waits for its agent; first it waits for a host start slot
   * (`[runtime] start_concurrency`), which it keeps until its first container
   * has started.
   */
  async start(signal?: AbortSignal): Promise<void> {
    this.mark("config");
    await this.takeStartSlot(signal);
    try {
      await this.startVm(signal);
    } catch (err) {
      this.releaseStartSlot();
      throw err;
    }
    this.startSlot?.expireIn(START_SLOT_GRACE_MS);
  }

  private async takeStartSlot(signal?: AbortSignal): Promise<void> {
    const slots = startSlotsFor(this.opts.config.runtime.start_concurrency);
    if (!slots) return;
    this.startSlot = await slots.acquire(signal);
    this.mark("start_slot");
    const log = { limit: slots.limit };
    if (!this.startSlot) this.opts.logger.warn(log, "no start slot came free in time: starting without one");
    else if (this.startSlot.waitedMs >= 1) this.opts.logger.info({ ...log, waitedMs: Math.round(this.startSlot.waitedMs) }, "waited for a start slot");
  }

  private releaseStartSlot(): void {
    this.startSlot?.release();
    this.startSlot = undefined;
  }

  /** A templated shape without a usable template boots cold: say so, and have the template rebuilt in the background ([factory] auto_rebuild). */
  private reportMissingTemplate(why: string): void {
    const { config, logger } = this.opts;
    if (!config.factory.auto_rebuild) return void logger.warn({ hint: "run `hako factory init` (`hako factory status` lists the templates)" }, why);
    const build = requestTemplateBuild(config, logger);
    if (build.pid === undefined) return void logger.warn({ hint: "run `hako factory init`" }, `${why}; the background template build could not start: ${build.error}`);
    const what = build.started ? "started a template build" : "a template build runs";
    logger.warn({ buildPid: build.pid, buildLog: build.log }, `${why}; ${what} in the background (pid ${build.pid}, log ${build.log})`);
  }

  private async startVm(signal?: AbortSignal): Promise<void> {
    const { config, hypervisor } = this.opts;
    const q = config.hypervisor.qemu;
    const podNet = await this.openNetwork();
    const vcpus = this.opts.size?.vcpus ?? q.default_vcpus;
    const memoryMiB = this.opts.size?.memoryMiB ?? q.default_memory;
    const shape = { vcpus, memoryMiB, accel: this.opts.accel, nics: podNet?.endpoints.length ?? 0 };
    const template = findTemplate(config, shape);
    this.state.template = template?.key;
    const noTemplate = template ? undefined : missingTemplateWarning(config, shape);
    if (noTemplate) this.reportMissingTemplate(noTemplate);
    const vmDir = join(this.dir, "vm");
    const cached = template && config.factory.vm_cache_number > 0 ? claimCachedVm(config, template.key, vmDir) : undefined;
    if (cached) {
      this.state.vmmPid = cached.pid;
      this.state.vmCache = true;
      this.consoleLogPath = join(vmDir, "console.log");
      this.save();
      this.mark("vm_cache_claimed");
    }
    this.share = new VirtioNinePShare(this.id, join(cached ? vmDir : this.dir, "shared"), q.msize_9p);
    if (cached) {
      // The cached VM's agent is up already: reach it, and set the guest up,
      // while its taps move into the pod netns.
      const plumbing = podNet ? moveCachedTaps(cached, podNet.netnsPath).then((taps) => this.attachNetwork(podNet, taps)) : Promise.resolve(undefined);
      const adopting = (async () => {
        this.vm = await hypervisor.adopt({ id: this.id, pid: cached.pid, runDir: vmDir, consoleLog: this.consoleLog }, signal);
        this.mark("vmm_adopted");
        await this.connectAgent(signal);
        await this.configureGuest(podNet, true);
      })();
      await allSettledThenThrow<unknown>([plumbing, adopting]);
    } else {
      const network = podNet ? await this.attachNetwork(podNet, []) : undefined;
      this.vm = await hypervisor.start(
        template
          ? cloneSpec(config, template, { id: this.id, runDir: this.dir, shareDir: this.share.hostDir, consoleLog: this.consoleLog, network })
          : {
              id: this.id,
              runDir: this.dir,
              accel: this.opts.accel,
              vcpus,
              memoryMiB,
              ...guestBoot(q),
              // Under TCG the agent runs without V8's JIT (QEMU would retranslate the code it
              // writes: the agent starts ~0.3 s faster without it, make bench) and memory reducer.
              kernelParams: [...(this.opts.accel === "tcg" ? TCG_AGENT_PARAMS : []), `hako.share=${this.share.tag},${q.msize_9p}`],
              sharedDirs: [{ tag: this.share.tag, hostPath: this.share.hostDir }],
              consoleLog: this.consoleLog,
              verboseConsole: config.agent.debug,
              network,
            },
        signal,
      );
      this.mark("vmm_started");
      await this.connectAgent(signal);
      await this.configureGuest(podNet, template !== undefined);
    }
    this.state.status = "created";
    this.save();
  }

  /**
   * The guest side of the pod: its network (the host's taps may still be
   * moving: the guest does not see them) and CreateSandbox (share mount,
   * hostname, clock) touch different things in the guest, so they run
   * concurrently (each is a few guest process spawns, ~0.1 s apiece under TCG).
   */
  private async configureGuest(podNet: PodNetwork | undefined, fromTemplate: boolean): Promise<void> {
    const agent = this.agent!.agent;
    const guestNetwork = podNet
      ? configureGuestNetwork(this.id, agent, podNet.scan, this.opts.logger, fromTemplate ? podNet.scan.interfaces.map((_, i) => templateGuestNic(i)) : undefined).then(() => this.mark("guest_network"))
      : Promise.resolve();
    const sandbox = agent.createSandbox({
      sandboxId: this.id,
      hostname: (this.opts.hostname || this.id).slice(0, 63),
      storages: [this.share!.guestStorage()],
      hostTimeUnixNano: BigInt(Date.now()) * 1_000_000n,
      entropy: randomBytes(64),
    }).then(() => this.mark("sandbox_created"));
    await allSettledThenThrow<unknown>([guestNetwork, sandbox]);
  }

  /** Records the VM's QEMU, then waits for its agent's health check. */
  private async connectAgent(signal?: AbortSignal): Promise<void> {
    const { config } = this.opts;
    const vm = this.vm!;
    this.state.vmmPid = vm.pid;
    this.save();
    this.opts.logger.debug({ pid: vm.pid, cached: this.state.vmCache === true }, "VM started");
    this.agent = await connectAgentWhenReady(this.id, vm.agentSocketPath, config.agent.dial_timeout * 1000, vm.exited, signal);
    this.mark("agent_ready");
    // For `hako trace`: splits the boot into guest kernel and agent start.
    if (this.agent.guestAgentLaunchMs > 0) this.state.guestAgentLaunchUptimeMs = this.agent.guestAgentLaunchMs;
  }

  /** Scans the pod netns (changes nothing there); undefined when the VM gets no network. */
  private async openNetwork(): Promise<PodNetwork | undefined> {
    const { netnsPath, config, logger } = this.opts;
    if (netnsPath === undefined) return undefined;
    if (config.runtime.internetworking_model === "none") {
      logger.info({ netns: netnsPath }, "runtime.internetworking_model = none: the VM gets no network");
      return undefined;
    }
    const net = await PodNetwork.open(netnsPath);
    if (net.endpoints.length === 0) {
      logger.warn({ netns: netnsPath }, "the network namespace has no Ethernet interface: the VM gets no network");
      return undefined;
    }
    return net;
  }

  /**
   * Plumbs a tap per interface into the pod netns (or takes the cached VM's
   * taps, moved there). The record is saved before anything is created, so
   * that a crash from here on is undone by `hako delete -f` or the shim's delete.
   */
  private async attachNetwork(net: PodNetwork, handedOverTaps: string[]): Promise<VmNetwork> {
    this.network = net;
    this.state.network = net.record();
    this.save();
    await net.attach(handedOverTaps);
    this.state.network = net.record();
    this.save();
    this.mark("network_attached");
    this.opts.logger.debug({ netns: net.netnsPath, taps: net.endpoints.map((e) => e.tapName) }, "pod network attached");
    return { netnsPath: net.netnsPath, nics: net.endpoints.map((e) => ({ tapName: e.tapName, mac: e.mac })) };
  }

  /** Shares the bundle's rootfs and bind mounts, then creates the container in the guest. */
  async createContainer(cid: string, bundle: Bundle, terminal: boolean): Promise<void> {
    this.startSlot?.expireIn(Infinity); // the first container came in time: the slot is kept until it starts
    try {
      await this.createGuestContainer(cid, bundle, terminal);
    } catch (err) {
      this.releaseStartSlot();
      throw err;
    }
    this.markFirst("container_created");
  }

  private async createGuestContainer(cid: string, bundle: Bundle, terminal: boolean): Promise<void> {
    const agent = this.requireAgent();
    const share = this.share!;
    // The rootfs and each bind mount go to a directory of their own, so their
    // `mount` spawns run side by side (a CRI container has 3-4: ~8 ms less on
    // an idle host). All are waited for before a failure is passed on: the
    // caller's cleanup must not run while a mount is still being made.
    const binds = bindMountsToShare(bundle.spec);
    const [root, ...boundPaths] = await allSettledThenThrow([
      share.share(cid, "rootfs", bundle.rootfs, { readonly: false }),
      ...binds.map((m) => share.share(cid, join("mounts", String(m.index)), m.source, { readonly: m.readonly })),
    ]);
    const guestMounts = new Map(binds.map((m, i) => [m.index, boundPaths[i]!.guestPath]));
    const spec = guestSpec(cid, bundle.spec, root!.guestPath, guestMounts, { hostPid: this.opts.hostPid === true });
    const ownUts = (spec.linux?.namespaces ?? []).some((n) => n.type === "uts");
    if (bundle.spec.hostname === undefined && ownUts) spec.hostname = cid.slice(0, 63);
    await agent.agent.createContainer({ containerId: cid, ociSpecJson: JSON.stringify(spec), terminal });
  }

  async startContainer(cid: string): Promise<number> {
    const res = await this.requireAgent()
      .agent.startContainer({ containerId: cid })
      .finally(() => this.releaseStartSlot());
    this.markFirst("container_started");
    this.state.guestPid = res.pid;
    this.state.status = "running";
    this.save();
    return res.pid;
  }

  /** Removes a container from the guest and its shares from the host. */
  async removeContainer(cid: string): Promise<void> {
    if (this.agent && !this.stopped) await this.agent.agent.removeContainer({ containerId: cid, timeout: 0 }, { timeoutMs: 10_000 }).catch(() => undefined);
    await this.share?.unshareContainer(cid);
  }

  requireAgent(): AgentClient {
    if (!this.agent) throw new RuntimeError(Code.FAILED_PRECONDITION, this.id, `sandbox ${this.id} has no agent connection`);
    return this.agent;
  }

  /** Stops the VM and removes every host resource of the sandbox. Idempotent; concurrent calls share one teardown. */
  destroy(): Promise<void> {
    this.destroying ??= this.teardown();
    return this.destroying;
  }

  private async teardown(): Promise<void> {
    this.stopped = true;
    this.releaseStartSlot();
    const log = this.opts.logger;
    if (this.vm) archiveTrace(this.opts.config.runtime.state_dir, traceFromState(this.state));
    // No DestroySandbox round trip: nothing in the guest outlives the VM, and
    // the guest-side unmounts and crun deletes only delay the QMP quit.
    this.agent?.close();
    if (this.vm) await this.vm.stop(2000).catch((err: unknown) => log.warn({ err }, "VM stop failed"));
    else if (this.state.vmCache) await killRecordedVmm(this.state.vmmPid); // claimed, not yet adopted
    // After QEMU is gone (it held the taps). A netns that is gone already (CRI removes it after StopPodSandbox) is clean.
    let networkError: unknown;
    if (this.network) await this.network.detach().catch((err: unknown) => (networkError = err));
    if (this.share) await this.share.cleanup();
    if (networkError !== undefined) {
      // Keep state.json (and its network record) so that `hako delete -f` / the shim's delete can retry.
      log.error({ err: networkError }, "removing the pod network plumbing failed; the sandbox state is kept for a retry");
      this.state.network = this.network!.record();
      this.state.status = "stopped";
      this.save();
      throw networkError;
    }
    await removeTree(this.id, this.dir);
  }
}
