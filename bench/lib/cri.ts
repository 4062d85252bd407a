// The "cri" section: what Kubernetes sees. One private containerd with the
// CRI plugin (test/helpers/cri-containerd.ts: runtime handlers `hako`,
// `hako-template` (the same configuration with VM templating on) and `runc`,
// a CNI bridge of the benchmark's own, busybox and pause imported), driven
// over CRI by our client as kubelet would:
//
// 0. `hako factory init` builds the templates `hako-template` pods are
//    restored from (bench/lib/template.ts; destroyed in the teardown);
// 1. pod start, the three handlers alternated: RunPodSandbox +
//    CreateContainer + StartContainer of `sh -c 'echo started; exec sleep
//    3600'`, until the CRI log file holds the line "started" (the
//    container's process ran);
// 2. host memory of N idle pods per handler, one handler after the other,
//    each pod's PSS summed over its shim and the shim's descendants.
//
// Every pod is stopped and removed through CRI; the leak check (criLeaks)
// covers what the section made.
import { NETNS_DIR } from "../../test/helpers/leaks.js";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { CriClient } from "../../src/cli/cri/cri-client.js";
import { shimSocketAddress, socketPathOf } from "../../src/shim/address.js";
import { cniResults, startCriContainerd, type CniNetwork, type CriContainerd } from "../../test/helpers/cri-containerd.js";
import { containerConfig, podConfig, type ContainerExtra, type PodConfig } from "../../test/helpers/cri-specs.js";
import { stopAfterWindDown, track, untrack } from "./children.js";
import type { KernelEnv } from "./env.js";
import { CACHE_FILL_TIMEOUT_MS, cacheIdleMemory, destroyTemplates, initTemplates, startCache, stopCache, templateLeaks, vmCacheProcesses } from "./template.js";
import type { VmCacheDaemon } from "../../test/helpers/hako.js";
import { memAvailableMiB, podMemory, podProcesses, processesInCgroupsOf, processTable, qemusOf, shimsServing, type PodMemory } from "./pod-processes.js";
import { isWaitingSpare } from "../../test/helpers/processes.js";
import { HAKO } from "../../test/helpers/hako.js";
import { readState, sandboxDir } from "../../src/runtime/state.js";
import { KSM_AGGRESSIVE, waitKsmSettled, type KsmSettings, type KsmStats } from "../../src/resource/ksm.js";
import { restoreKsm, setKsmPace } from "./ksm-journal.js";
import { measureFloor, measureSandbox, primeHostMemory } from "./measure.js";
import { untilSeen } from "../../src/runtime/watch-poll.js";

/** Not the tests' network (hakotest0, 10.217.0.0/24): a `make test` may run beside the benchmark. */
export const CRI_NETWORK: CniNetwork = { name: "hako-bench-pods", bridge: "hakobench0", subnet: "10.218.0.0/24", gateway: "10.218.0.1" };
const CRI_NAMESPACE = "k8s.io";
/** Cold hako pods, hako pods restored from a VM template, hako pods taken warm from the VM cache, and the baseline. */
export const HANDLERS = ["hako", "hako-template", "hako-cache", "runc"] as const;
export type Handler = (typeof HANDLERS)[number];
/** The io section's: its two pods stay up for the whole section, so how a hako pod started does not matter there. */
export const IO_HANDLERS = ["hako", "runc"] as const;
export type IoHandler = (typeof IO_HANDLERS)[number];
/** The handler whose pods are cloned from the templates of the kernel's templating configuration. */
export const TEMPLATE_HANDLER: Handler = "hako-template";
/** The handler whose pods take a VM from `hako factory cache` (the same templates, vm_cache_number warm clones). */
export const CACHE_HANDLER: Handler = "hako-cache";
/** The container writes this line first: its presence in the CRI log means the process ran. */
export const STARTED_MARKER = "started";
export const CONTAINER_COMMAND = ["sh", "-c", `echo ${STARTED_MARKER}; exec sleep 3600`];
const STARTED_LINE = new RegExp(`^\\S+ stdout [FP] ${STARTED_MARKER}$`, "m");
const CONTAINER_NAME = "main";
const LOG_NAME = `${CONTAINER_NAME}.log`;
/** Idle time of the N pods before their memory is read. */
export const SETTLE_MS = 5_000;
/**
 * Before every measured pod start, whatever its handler: a second with
 * nothing of the benchmark's running. The previous pod's teardown goes on
 * after RemovePodSandbox returns (its QEMU and shim exiting, containerd's
 * clean-up), and a pod started into it shares the 2 cores with it. Without
 * this the order decided who paid: the cache pod always came right after the
 * template pod's teardown, runc after the wait for the cache's refill.
 */
export const POD_START_QUIET_MS = 1_000;
/** Longest wait for KSM to settle over the idle pods (a pass over 10 cold VMs takes seconds at KSM_AGGRESSIVE). */
const KSM_SETTLE_TIMEOUT_MS = 120_000;
const LOG_POLL_MS = 10;
const CALL_TIMEOUT_MS = 120_000;
const STARTED_TIMEOUT_MS = 60_000;
const GONE_TIMEOUT_MS = 60_000;
/** On interruption the section finishes its current step for at most this long before containerd is stopped. */
const WIND_DOWN_MS = 60_000;
const CNI_RESULTS_DIR = "/var/lib/cni/results";
const RUNC_STATE_DIR = `/run/containerd/runc/${CRI_NAMESPACE}`;
const CGROUP_V1_ROOT = "/sys/fs/cgroup";

/** What the section made, for the final leak check (filled as it goes). */
export const criMade = {
  dirs: [] as string[],
  addresses: [] as string[],
  podIds: [] as string[],
  containerIds: [] as string[],
  /** The pods' network namespaces (/var/run/netns/cni-*), from PodSandboxStatus. */
  netns: [] as string[],
  /** The CNI networks of the sections' containerds (their bridges and cached results). */
  networks: [] as CniNetwork[],
};

export interface PodStartSample {
  /** The RunPodSandbox call (sandbox, network, for hako the VM boot). */
  runPodSandboxMs: number;
  createContainerMs: number;
  startContainerMs: number;
  /** StartContainer returned → "started" read from the CRI log file. */
  logLineMs: number;
  /** RunPodSandbox sent → "started" read: the pod start. */
  totalMs: number;
  /** StopPodSandbox + RemovePodSandbox → the pod's shim (and QEMU) gone. Not part of the start. */
  teardownMs: number;
}

export interface DensitySample {
  handler: Handler;
  pods: number;
  settleMs: number;
  /** Host MemAvailable before the first pod, with all pods up after the settle, after the teardown. */
  memAvailableBeforeMiB: number;
  memAvailableSettledMiB: number;
  memAvailableAfterMiB: number;
  /** Each pod's start (as in PodStartSample.totalMs), in start order. */
  startMs: number[];
  perPod: PodMemory[];
  /** The same pods again after KSM settled over them (hako handlers, when the host has KSM and --ksm on). */
  ksm?: { settled: boolean; waitedMs: number; stats: KsmStats; perPod: PodMemory[] };
}

export interface CriSamples {
  containerdVersion: string;
  kernel: string;
  accel: string;
  network: string;
  /** How long `hako factory init` took (before any pod start). */
  templateInitMs: number;
  /** The VM cache when full, before any pod: its VMs and their PSS (the node's cost of keeping them). */
  vmCacheIdle?: { vms: number; pssMiB: number };
  podStart: Record<Handler, PodStartSample[]>;
  /**
   * Per run, just before its cold pod: the boot section's two measures again (bare QEMU boot to
   * init; QEMU spawn → agent ready of an in-process sandbox), so that the cold-start target is
   * judged against a baseline taken beside it, not minutes earlier on a host whose load drifts.
   */
  bootPair: BootPairSample[];
  density: Partial<Record<Handler, DensitySample>>;
}

export interface BootPairSample {
  floorMs: number;
  /** floor + agent start, as the boot section defines them. */
  agentReadyMs: number;
}

export interface CriSectionOptions {
  runs: number;
  warmup: number;
  /** Pods per runtime in the memory part. */
  pods: number;
  /** Parent of the pods' log dirs (removed with the benchmark's temp dir). */
  workDir: string;
  /** The /bin/true bundle of the in-process sandbox in each run's boot pair. */
  bundleDir: string;
  /** Also read the idle hako pods' PSS with KSM settled (ksmd turned on meanwhile, its settings put back after); the host must have KSM. */
  ksm: boolean;
}

/** One section's private CRI containerd and what its pods need. */
export interface CriCtx {
  c: CriContainerd;
  cri: CriClient;
  logRoot: string;
  /** Prefix of every pod name of this run. */
  prefix: string;
  /** The section's name in log lines ("cri", "io"). */
  section: string;
  log: (s: string) => void;
  /** Run by the teardown after containerd has stopped (no pod left to use them), also on failure or interruption. */
  afterStop: Array<() => Promise<void>>;
  /** hako's state dir (the sandboxes' state.json: a cached VM's QEMU is found by its vmmPid). */
  stateDir: string;
  /** The VM cache of the hako-cache handler, while it runs. */
  cache?: VmCacheDaemon;
}

/**
 * Before a hako-cache pod starts, and after it is gone: the cache is full
 * again, so that the pod takes a warm VM and no refill runs beside the next
 * measured start (a refill is a restore + warm-up on a 2-core host).
 */
async function cacheSettled(ctx: CriCtx, handler: Handler): Promise<void> {
  if (handler === CACHE_HANDLER && ctx.cache) await ctx.cache.waitFull(CACHE_FILL_TIMEOUT_MS);
}

export interface StartedPod {
  handler: Handler;
  name: string;
  podId: string;
  containerId: string;
}

/** The pod's network namespace path from PodSandboxStatus (verbose: containerd's runtime spec). */
async function netnsOf(cri: CriClient, podId: string): Promise<string | undefined> {
  const r = await cri.podSandboxStatus(podId, { verbose: true });
  const info = r.info["info"];
  if (!info) return undefined;
  const parsed = JSON.parse(info) as { runtimeSpec?: { linux?: { namespaces?: Array<{ type?: string; path?: string }> } } };
  return parsed.runtimeSpec?.linux?.namespaces?.find((n) => n.type === "network")?.path || undefined;
}

/**
 * Waits for the "started" line in the CRI log. Woken by inotify on the log's
 * directory (containerd creates the file, then appends), so the time is taken
 * within a millisecond of the write: a 10 ms poll alone added ~5 ms on
 * average to every pod whose line comes after StartContainer (hako), and
 * nothing to one whose line is there at once (runc). The poll stays as a
 * safety net.
 */
async function waitForStartedLine(path: string, timeoutMs: number, pollMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  await untilSeen(
    dirname(path),
    async () => {
      const text = await readFile(path, "utf8").catch(() => "");
      if (STARTED_LINE.test(text)) return true;
      if (performance.now() > deadline) throw new Error(`no "${STARTED_MARKER}" line in ${path} after ${timeoutMs} ms (has: ${JSON.stringify(text.slice(-300))})`);
      return undefined;
    },
    pollMs,
  );
}

/** Stops and removes the pod, then waits until its shim and QEMU are gone; returns the ms it took. */
export async function removePod(ctx: CriCtx, podId: string): Promise<number> {
  const t0 = performance.now();
  await ctx.cri.stopPodSandbox(podId);
  await ctx.cri.removePodSandbox(podId);
  const deadline = t0 + GONE_TIMEOUT_MS;
  for (;;) {
    const table = processTable();
    const left = [...(podProcesses(table, ctx.c.address, podId) ? ["shim"] : []), ...qemusOf(table, podId).map((p) => `QEMU ${p.pid}`)];
    if (left.length === 0) return performance.now() - t0;
    if (performance.now() > deadline) throw new Error(`pod ${podId} removed, but its ${left.join(", ")} still there after ${GONE_TIMEOUT_MS} ms`);
    await sleep(20);
  }
}

/**
 * Starts one pod with one container and times it (see PodStartSample); the
 * pod is left running. On failure the pod is removed before the error is
 * passed on. `mounts` are the container's volumes (the io section's hostPath).
 */
export async function startPod(
  ctx: CriCtx,
  handler: Handler,
  name: string,
  mounts: ContainerExtra["mounts"] = [],
  /** How often the CRI log is read for the "started" line: the resolution of the pod's start time. */
  logPollMs = LOG_POLL_MS,
): Promise<{ pod: StartedPod; sample: Omit<PodStartSample, "teardownMs"> }> {
  const logDir = join(ctx.logRoot, name);
  mkdirSync(logDir, { recursive: true });
  const podCfg: PodConfig = podConfig({ name, uid: `${name}-uid`, hostname: name, logDir });
  const t0 = performance.now();
  const podId = await ctx.cri.runPodSandbox(podCfg, handler);
  const t1 = performance.now();
  criMade.podIds.push(podId);
  try {
    const containerId = await ctx.cri.createContainer(podId, containerConfig(CONTAINER_NAME, CONTAINER_COMMAND, { image: ctx.c.busybox, logPath: LOG_NAME, mounts }), podCfg);
    const t2 = performance.now();
    criMade.containerIds.push(containerId);
    await ctx.cri.startContainer(containerId);
    const t3 = performance.now();
    await waitForStartedLine(join(logDir, LOG_NAME), STARTED_TIMEOUT_MS, logPollMs);
    const t4 = performance.now();
    // Outside the timed part: where CNI put the pod, for the leak check.
    const netns = await netnsOf(ctx.cri, podId);
    if (netns) criMade.netns.push(netns);
    else ctx.log(`bench: ${ctx.section}: pod ${podId} (${handler}): no network namespace path in PodSandboxStatus`);
    return {
      pod: { handler, name, podId, containerId },
      sample: { runPodSandboxMs: t1 - t0, createContainerMs: t2 - t1, startContainerMs: t3 - t2, logLineMs: t4 - t3, totalMs: t4 - t0 },
    };
  } catch (err) {
    await removePod(ctx, podId).catch((e: Error) => ctx.log(`bench: ${ctx.section}: removing pod ${podId} after a failed start: ${e.message}`));
    throw err;
  }
}

function fmtMs(ms: number): string {
  return `${ms.toFixed(0)} ms`;
}

async function measurePodStarts(k: KernelEnv, ctx: CriCtx, s: CriSamples, o: CriSectionOptions, stop: () => boolean): Promise<void> {
  for (let i = -o.warmup; i < o.runs && !stop(); i++) {
    const tag = i < 0 ? `warm-up ${i + o.warmup + 1}/${o.warmup}` : `run ${i + 1}/${o.runs}`;
    // The three VMs the cold target compares (floor, agent ready, cold pod) start after the same
    // memory priming as the boot section's (primeHostMemory); the other handlers' pods do not.
    await primeHostMemory();
    const floor = await measureFloor(k);
    await primeHostMemory();
    const sb = await measureSandbox(k, o.bundleDir, `${ctx.prefix}-boot-${i + o.warmup}`);
    const line = [`floor ${fmtMs(floor.markerMs)}, agent ready ${fmtMs(sb.spawnToAgentMs)}`];
    if (i >= 0) s.bootPair.push({ floorMs: floor.markerMs, agentReadyMs: sb.spawnToAgentMs });
    for (const handler of HANDLERS) {
      await cacheSettled(ctx, handler);
      await sleep(POD_START_QUIET_MS);
      if (handler === "hako") await primeHostMemory();
      const { pod, sample } = await startPod(ctx, handler, `${ctx.prefix}-${handler}-${i + o.warmup}`);
      const teardownMs = await removePod(ctx, pod.podId);
      await cacheSettled(ctx, handler);
      line.push(
        `${handler} ${fmtMs(sample.totalMs)} (run pod ${sample.runPodSandboxMs.toFixed(0)}, create ${sample.createContainerMs.toFixed(0)}, ` +
          `start ${sample.startContainerMs.toFixed(0)}, log ${sample.logLineMs.toFixed(0)}; teardown ${teardownMs.toFixed(0)})`,
      );
      if (i >= 0) s.podStart[handler].push({ ...sample, teardownMs });
    }
    ctx.log(`bench: cri ${tag}: pod start: ${line.join(", ")}`);
  }
}

/** Each pod's memory now; a pod from the VM cache has its QEMU under the cache daemon, found through its state. */
function podsMemory(ctx: CriCtx, handler: Handler, pods: readonly StartedPod[], tag: string): PodMemory[] {
  const table = processTable();
  return pods.map((pod) => {
    const vmmPid = handler === CACHE_HANDLER ? readState(sandboxDir(ctx.stateDir, pod.podId))?.vmmPid : undefined;
    const m = podMemory(ctx.c.address, pod.podId, handler !== "runc", table, vmmPid);
    const parts = m.processes.map((p) => `${p.role} ${p.pid} ${p.pssMiB.toFixed(1)}`).join(" + ");
    ctx.log(`bench: cri: ${handler} pod ${pod.podId.slice(0, 12)}${tag}: PSS ${m.pssMiB.toFixed(1)} MiB = ${parts}`);
    return m;
  });
}

/** Starts `count` pods of `handler` one after the other, lets them idle, reads their memory (also with KSM settled), removes them. */
async function measureDensity(ctx: CriCtx, handler: Handler, count: number, stop: () => boolean, ksm: boolean): Promise<DensitySample> {
  const sample: DensitySample = {
    handler,
    pods: count,
    settleMs: SETTLE_MS,
    memAvailableBeforeMiB: memAvailableMiB(),
    memAvailableSettledMiB: NaN,
    memAvailableAfterMiB: NaN,
    startMs: [],
    perPod: [],
  };
  const pods: StartedPod[] = [];
  let ksmBefore: KsmSettings | undefined;
  try {
    for (let i = 0; i < count && !stop(); i++) {
      await cacheSettled(ctx, handler);
      const { pod, sample: start } = await startPod(ctx, handler, `${ctx.prefix}-${handler}-mem-${i}`);
      pods.push(pod);
      sample.startMs.push(start.totalMs);
      ctx.log(`bench: cri: ${handler} pod ${i + 1}/${count} running after ${fmtMs(start.totalMs)}`);
    }
    if (stop()) return sample;
    // The cache full again, as when memAvailableBeforeMiB was read: the difference is the pods'.
    await cacheSettled(ctx, handler);
    await sleep(SETTLE_MS);
    sample.memAvailableSettledMiB = memAvailableMiB();
    sample.perPod.push(...podsMemory(ctx, handler, pods, ""));
    // As Kata's density metrics measure: ksmd on, until a pass over all guests finds little new to merge.
    if (ksm && handler !== "runc" && !stop()) {
      ksmBefore = setKsmPace(KSM_AGGRESSIVE);
      const r = await waitKsmSettled({ timeoutMs: KSM_SETTLE_TIMEOUT_MS });
      ctx.log(
        `bench: cri: ${handler}: KSM ${r.settled ? "settled" : "NOT settled"} after ${fmtMs(r.waitedMs)} ` +
          `(${r.stats.fullScans} full scans, ${r.stats.pagesShared} pages kept for ${r.stats.pagesSharing} more mappings)`,
      );
      sample.ksm = { ...r, perPod: podsMemory(ctx, handler, pods, " with KSM") };
    }
    return sample;
  } finally {
    const failures: string[] = [];
    for (const pod of pods) await removePod(ctx, pod.podId).catch((e: Error) => failures.push(e.message));
    // After the pods are gone (an unmerge then has little left to copy).
    if (ksmBefore) restoreKsm(ksmBefore);
    sample.memAvailableAfterMiB = memAvailableMiB();
    if (failures.length > 0) throw new Error(`removing the ${handler} pods: ${failures.join("; ")}`);
  }
}

/**
 * Best-effort teardown: pods of this run still known to CRI are stopped and
 * removed (CNI then deletes their netns), containerd is stopped (it kills
 * and deletes what is left), then sandboxes of our pods still in hako's state
 * dir go through `hako delete --force`, and netns of our pods that survived
 * containerd are deleted.
 */
async function teardown(ctx: CriCtx, k: KernelEnv): Promise<void> {
  try {
    const pods = await ctx.cri.listPodSandbox(undefined, { timeoutMs: 30_000 });
    for (const p of pods.filter((x) => (x.metadata?.name ?? "").startsWith(`${ctx.prefix}-`))) {
      if (!criMade.podIds.includes(p.id)) criMade.podIds.push(p.id);
      ctx.log(`bench: ${ctx.section}: pod ${p.id} (${p.metadata?.name}) still there: stop + remove`);
      await removePod(ctx, p.id).catch((e: Error) => ctx.log(`bench: ${ctx.section}: ${e.message}`));
    }
  } catch (err) {
    ctx.log(`bench: ${ctx.section}: listing pods at the end: ${(err as Error).message}`);
  }
  ctx.cri.close();
  await ctx.c.stop();
  for (const fn of ctx.afterStop) await fn().catch((e: Error) => ctx.log(`bench: ${ctx.section}: teardown: ${e.message}`));
  const sbDir = join(k.config.runtime.state_dir, "sandboxes");
  for (const id of existsSync(sbDir) ? readdirSync(sbDir).filter((n) => criMade.podIds.includes(n)) : []) {
    ctx.log(`bench: ${ctx.section}: sandbox ${id} left by its shim: hako delete --force`);
    spawnSync(HAKO, ["--config", k.configFile, "delete", "--force", id], { stdio: "ignore", timeout: 60_000 });
  }
  for (const ns of criMade.netns.filter((p) => existsSync(p))) {
    ctx.log(`bench: ${ctx.section}: netns ${ns} of our pod outlived containerd: ip netns delete`);
    spawnSync("ip", ["netns", "delete", ns.slice(NETNS_DIR.length + 1)], { stdio: "ignore" });
  }
}

/**
 * Runs `body` against a private CRI containerd on `network` (refused if its
 * bridge exists: another run's, or a leak), then tears everything down
 * (teardown above), also when `body` throws or the benchmark is interrupted.
 * What it makes goes into criMade for criLeaks. Shared by the cri and io
 * sections; each has a network of its own.
 */
export async function withCriContainerd<T>(
  k: KernelEnv,
  network: CniNetwork,
  section: string,
  workDir: string,
  log: (s: string) => void,
  body: (ctx: CriCtx, version: { name: string; version: string }) => Promise<T>,
): Promise<T> {
  if (existsSync(`/sys/class/net/${network.bridge}`)) {
    throw new Error(`bridge ${network.bridge} exists: another benchmark's ${section} network, or a leak from an earlier one`);
  }
  const logRoot = join(workDir, `${section}-logs`);
  mkdirSync(logRoot, { recursive: true });
  criMade.networks.push(network);
  const c = await startCriContainerd({ hakoConfig: k.configFile, network, extraHakoHandlers: { [TEMPLATE_HANDLER]: k.templateConfigFile, [CACHE_HANDLER]: k.cacheConfigFile } });
  criMade.dirs.push(c.dir);
  criMade.addresses.push(c.address);
  const containerdPid = c.pid();
  track(containerdPid, `containerd (${section})`);
  const ctx: CriCtx = {
    c,
    cri: new CriClient(c.criAddress, { defaultTimeoutMs: CALL_TIMEOUT_MS }),
    logRoot,
    prefix: `bench-${process.pid}-${section}`,
    section,
    log,
    afterStop: [],
    stateDir: k.config.runtime.state_dir,
  };
  let stopping: Promise<void> | undefined;
  const stopOnce = (): Promise<void> => (stopping ??= teardown(ctx, k));
  // On interruption: let the section notice stop() and wind down (bounded), then stop containerd.
  const sectionOver = stopAfterWindDown(stopOnce, WIND_DOWN_MS);
  try {
    const v = await ctx.cri.version();
    log(`bench: ${section}: ${v.runtimeName} ${v.runtimeVersion} (pid ${containerdPid}, ${c.dir}), network ${network.bridge} ${network.subnet}, hako config ${k.configFile}`);
    return await body(ctx, { name: v.runtimeName, version: v.runtimeVersion });
  } finally {
    await stopOnce();
    untrack(containerdPid);
    sectionOver();
  }
}

/** Runs the section; `log` gets one line per sample. */
export async function runCriSection(k: KernelEnv, o: CriSectionOptions, log: (s: string) => void, stop: () => boolean): Promise<CriSamples> {
  return withCriContainerd(k, CRI_NETWORK, "cri", o.workDir, log, async (ctx, v) => {
    const s: CriSamples = {
      containerdVersion: v.version,
      kernel: k.kernel,
      accel: k.probe.accel,
      network: `${CRI_NETWORK.bridge} ${CRI_NETWORK.subnet}`,
      templateInitMs: NaN,
      podStart: { hako: [], "hako-template": [], "hako-cache": [], runc: [] },
      bootPair: [],
      density: {},
    };
    // Registered before the init: a build that fails or is interrupted half-way leaves a template dir too.
    ctx.afterStop.push(() => destroyTemplates(k, log));
    log(`bench: cri: hako factory init (${k.templateConfigFile}, templates in ${k.templateDir})`);
    s.templateInitMs = await initTemplates(k, log);
    if (stop()) return s;
    const cache = await startCache(k, log);
    ctx.cache = cache;
    // Before the templates go (the cache would stop its VMs anyway once their template is gone).
    ctx.afterStop.unshift(() => stopCache(cache, log));
    s.vmCacheIdle = cacheIdleMemory(k);
    log(`bench: cri: the VM cache's ${s.vmCacheIdle.vms} idle VMs: PSS ${s.vmCacheIdle.pssMiB.toFixed(1)} MiB`);
    if (stop()) return s;
    log(`bench: cri: pod start: ${o.runs} runs + ${o.warmup} warm-up, each: floor, agent ready, then ${HANDLERS.join(", ")}; then ${o.pods} idle pods per runtime`);
    await measurePodStarts(k, ctx, s, o, stop);
    for (const handler of HANDLERS) {
      if (stop()) break;
      s.density[handler] = await measureDensity(ctx, handler, o.pods, stop, o.ksm);
    }
    return s;
  });
}

/**
 * What the cri and io sections may have left: the VM templates (their dir under the state dir,
 * factory init's scratch netns), their containerd dirs, the netns, CNI cache
 * entries, runc state dirs, cgroups (runc's /k8s.io/<id> in each v1
 * hierarchy) and shim sockets of their pods and containers, their bridges; shims
 * serving their containerds, QEMUs named after their pods, and processes in the
 * cgroups of their containers. `qemuNames` are for findLeaks' QEMU scan.
 */
export function criLeaks(): { paths: string[]; processes: string[]; qemuNames: string[] } {
  if (criMade.addresses.length === 0) return { paths: templateLeaks(), processes: vmCacheProcesses(), qemuNames: [] };
  const ids = [...criMade.podIds, ...criMade.containerIds];
  const paths = [
    ...criMade.dirs,
    ...criMade.netns,
    ...criMade.networks.flatMap((n) => [`/sys/class/net/${n.bridge}`, ...cniResults(n)]),
    ...criMade.podIds.map((id) => join(CNI_RESULTS_DIR, `cni-loopback-${id}-lo`)),
    ...ids.map((id) => join(RUNC_STATE_DIR, id)),
    ...(existsSync(CGROUP_V1_ROOT) ? readdirSync(CGROUP_V1_ROOT) : []).flatMap((hierarchy) => ids.map((id) => join(CGROUP_V1_ROOT, hierarchy, CRI_NAMESPACE, id))),
    ...criMade.addresses.flatMap((a) => criMade.podIds.map((id) => socketPathOf(shimSocketAddress(a, CRI_NAMESPACE, id)))),
    ...templateLeaks(),
  ].filter((p) => existsSync(p));
  const table = processTable();
  // A spare shim waits for the next pod while its containerd runs, and exits with it.
  const shims = criMade.addresses
    .flatMap((a) => shimsServing(table, a).filter((p) => !isWaitingSpare(p)))
    .map((p) => `${p.pid} ${p.argv.join(" ").slice(0, 160)}`);
  return { paths, processes: [...shims, ...processesInCgroupsOf(ids), ...vmCacheProcesses()], qemuNames: criMade.podIds.map((id) => `hako-${id}`) };
}
