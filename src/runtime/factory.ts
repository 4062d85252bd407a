// VM templates (docs/templating.md): a booted VM with its agent up, paused,
// its RAM in a file under [factory] template_path and its device state saved
// with x-ignore-shared. A sandbox of the same shape starts as a clone: a
// private copy-on-write mapping of that RAM plus the saved state, ~0.2 s to a
// serving agent instead of a boot. A template is keyed by everything a clone
// must match; a key that differs means a rebuild, never a stale template.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Hypervisor, VmNetwork, VmSpec } from "../hypervisor/hypervisor.js";
import type { HakoConfig } from "./config.js";
import { connectAgentWhenReady } from "./agent-client.js";
import { execFileAsync } from "./command.js";
import { RuntimeError } from "./errors.js";
import { Code } from "../protocols/ttrpc/status.js";
import type { Logger } from "./logger.js";
import { pidAlive } from "./state.js";
import { fileStamp } from "./paths.js";
import type { SandboxSize } from "./sandbox-sizing.js";

/**
 * The agent's node options under TCG: no JIT (QEMU would retranslate the code
 * V8 writes), and no memory reducer (its idle-time GCs kept a freshly started
 * pod's QEMU at ~1 % of a core for its first minute; a guest's freed heap
 * does not return to the host anyway without free page reporting).
 */
const TCG_NODE_OPTS = ["--jitless", "--no-memory-reducer"];
export const TCG_AGENT_PARAMS = [`hako.node_opts=${TCG_NODE_OPTS.join(",")}`];
/**
 * A template's agent under TCG, on top of TCG_AGENT_PARAMS: compile every
 * function of the agent when it loads (`--no-lazy`) and keep the bytecode
 * (`--no-flush-bytecode`), so that a clone does not run V8's parser and
 * bytecode compiler on its pod-start path; `--expose-gc` lets PrepareTemplate
 * empty the young generation before the save, so that a clone's first
 * scavenge comes after its pod start, not in it. `--no-node-snapshot`: node's
 * own modules are compiled from source at start, so `--no-lazy` reaches them
 * too (from node's startup snapshot their functions stay lazy, and a clone
 * compiled the ones its pod start was first to call: ~3,800 translated blocks
 * and ~6.5 MiB of PSS per clone, a start ~100 ms slower);
 * `--no-enable-lazy-source-positions` keeps V8 from parsing a function again
 * when a stack trace needs its line numbers. A clone must translate (TCG)
 * every guest code path it runs: the first three cut a cloned pod start's
 * translated blocks from ~104k to ~91k, the last two a warm clone's (VM
 * cache) from ~14,300 to ~10,500 (docs/benchmarks.md). Cold VMs keep node's
 * snapshot and lazy compilation: it is their agent start that counts.
 */
export const TEMPLATE_TCG_AGENT_PARAMS = [`hako.node_opts=${[...TCG_NODE_OPTS, "--no-lazy", "--no-flush-bytecode", "--expose-gc", "--no-enable-lazy-source-positions", "--no-node-snapshot"].join(",")}`];
/** Bumped when what a template holds changes in a way its key does not see (QEMU's machine options, the agent's warm-up; its node options are in the key). */
const TEMPLATE_FORMAT = "4";
/** A template's NIC i has MAC 02:68:61:6b:6f:<i>; clones give the guest NIC the pod's (UpdateInterface by device). */
const TEMPLATE_MAC_PREFIX = "02:68:61:6b:6f:";
/** Guest name of a template's NIC i (the Debian kernel's, no udev in the guest). */
export const templateGuestNic = (i: number): string => `eth${i}`;

export interface TemplateShape extends SandboxSize {
  accel: "kvm" | "tcg";
  nics: number;
}

export interface TemplateManifest {
  key: string;
  shape: TemplateShape;
  created: string;
  memoryFile: string;
  stateFile: string;
  kernelParams: string[];
  /** The 9p tag the template's device has (a clone exports its own directory under it). */
  shareTag: string;
  /** The configuration file it was built from (HakoConfig.source): a background rebuild prunes only its own stale templates. */
  configSource?: string;
}

/** The kernel parameters a template of this shape boots with, its agent's node options among them (its clones keep them). */
export function templateKernelParams(shape: Pick<TemplateShape, "accel">): string[] {
  return shape.accel === "tcg" ? TEMPLATE_TCG_AGENT_PARAMS : [];
}

/** Everything a clone must match: QEMU, guest assets, the command line (the template's own parameters included). */
export function templateKey(cfg: HakoConfig, shape: TemplateShape, kernelParams: readonly string[] = templateKernelParams(shape)): string {
  const q = cfg.hypervisor.qemu;
  const boot = guestBoot(q);
  const parts = [
    TEMPLATE_FORMAT,
    fileStamp(q.path),
    fileStamp(boot.kernel),
    fileStamp(boot.image ?? boot.initrd ?? ""),
    boot.nodeImage ? fileStamp(boot.nodeImage) : "",
    q.machine_type,
    q.cpu_model,
    String(q.tb_size),
    String(q.msize_9p),
    q.kernel_params,
    kernelParams.join(" "),
    String(q.tcg_norandmaps),
    String(q.tcg_mitigations_off),
    q.guest_lockdown,
    JSON.stringify(shape),
  ];
  return createHash("sha256").update(parts.join("\n")).digest("hex").slice(0, 16);
}

const shapeDir = (cfg: HakoConfig, key: string): string => join(cfg.factory.template_path, key);

/** The configuration file a template is built from, as its manifest records it (absolute; "" for built-in defaults). */
export const configSourceOf = (cfg: HakoConfig): string => (cfg.source === "" ? "" : resolve(cfg.source));

/** The valid template for this shape, if one exists. */
export function findTemplate(cfg: HakoConfig, shape: TemplateShape): TemplateManifest | undefined {
  if (!cfg.factory.enable_template) return undefined;
  const key = templateKey(cfg, shape);
  try {
    const m = JSON.parse(readFileSync(join(shapeDir(cfg, key), "manifest.json"), "utf8")) as TemplateManifest;
    if (m.key !== key || !existsSync(m.memoryFile) || !existsSync(m.stateFile)) return undefined;
    return m;
  } catch {
    return undefined;
  }
}

/** The shapes `hako factory init` builds: the configured default size, without a NIC (`hako run`) and with one (pods). */
export function initTemplateShapes(cfg: HakoConfig, accel: TemplateShape["accel"]): TemplateShape[] {
  const q = cfg.hypervisor.qemu;
  return [0, 1].map((nics) => ({ vcpus: q.default_vcpus, memoryMiB: q.default_memory, accel, nics }));
}

/** "1 vCPU, 512 MiB, 1 NIC, tcg" */
export const describeShape = (s: TemplateShape): string => `${s.vcpus} vCPU, ${s.memoryMiB} MiB, ${s.nics} NIC, ${s.accel}`;

/**
 * For a sandbox that findTemplate found no template for: why it boots cold,
 * when that is worth a warning, i.e. for a shape `hako factory init` builds
 * (others boot cold by design). A template that is missing or stale (another
 * hako, kernel, initrd or configuration) makes every such start a cold boot
 * until it is rebuilt.
 */
export function missingTemplateWarning(cfg: HakoConfig, shape: TemplateShape): string | undefined {
  const built = initTemplateShapes(cfg, shape.accel).some((s) => s.vcpus === shape.vcpus && s.memoryMiB === shape.memoryMiB && s.nics === shape.nics);
  if (!cfg.factory.enable_template || !built) return undefined;
  return `templating is on but there is no usable template for ${describeShape(shape)} (none was built, or it no longer matches the configuration or assets): booting cold`;
}

export function listTemplates(cfg: HakoConfig): Array<TemplateManifest & { valid: boolean }> {
  const root = cfg.factory.template_path;
  if (!existsSync(root)) return [];
  const out: Array<TemplateManifest & { valid: boolean }> = [];
  for (const d of readdirSync(root)) {
    try {
      const m = JSON.parse(readFileSync(join(root, d, "manifest.json"), "utf8")) as TemplateManifest;
      out.push({ ...m, valid: m.key === templateKey(cfg, m.shape) && existsSync(m.memoryFile) && existsSync(m.stateFile) });
    } catch {
      /* not a template */
    }
  }
  return out;
}

/** A directory without a manifest this old is a build that died (a build writes its manifest last). */
const ABANDONED_BUILD_MS = 10 * 60_000;
/** A template is built in `<key>.build-<pid>` and renamed to `<key>` when complete. */
const BUILD_DIR_PID = /\.build-(\d+)$/;

/**
 * Removes templates that no longer match the configuration or assets (each
 * holds its guest RAM on tmpfs, hundreds of MiB) and builds that died; returns
 * what it removed. `hako factory init` runs it first. With `onlyFrom`, only
 * the stale templates built from that configuration file: what a background
 * rebuild (template-build.ts) may remove without touching the templates of
 * another configuration (another runtime handler) sharing template_path.
 * Dot entries (the build lock and log) are not templates; a build directory
 * whose builder is gone is removed.
 */
export function pruneStaleTemplates(cfg: HakoConfig, now = Date.now(), onlyFrom?: string): string[] {
  const root = cfg.factory.template_path;
  if (!existsSync(root)) return [];
  const listed = listTemplates(cfg);
  const valid = new Set(listed.filter((t) => t.valid).map((t) => t.key));
  const foreign = new Set(onlyFrom === undefined ? [] : listed.filter((t) => t.configSource !== onlyFrom).map((t) => t.key));
  const removed: string[] = [];
  for (const d of readdirSync(root)) {
    const dir = join(root, d);
    if (d.startsWith(".") || valid.has(d) || foreign.has(d)) continue;
    const builder = BUILD_DIR_PID.exec(d);
    if (builder) {
      if (pidAlive(Number(builder[1]))) continue;
    } else if (!existsSync(join(dir, "manifest.json"))) {
      // Not a template nor a build of this hako (an older one's): judged by age.
      if (onlyFrom !== undefined || now - statSync(dir).mtimeMs < ABANDONED_BUILD_MS) continue;
    }
    rmSync(dir, { recursive: true, force: true });
    removed.push(d);
  }
  return removed;
}

export function destroyTemplates(cfg: HakoConfig): number {
  const n = listTemplates(cfg).length;
  rmSync(cfg.factory.template_path, { recursive: true, force: true });
  return n;
}

/** The guest a VM boots: kernel, and root filesystem as an initrd (with node's image) or an erofs image. */
export function guestBoot(q: HakoConfig["hypervisor"]["qemu"]): Pick<VmSpec, "kernel" | "initrd" | "image" | "nodeImage"> {
  if (q.rootfs_type === "erofs") return { kernel: q.kernel, image: q.image };
  return { kernel: q.kernel, initrd: q.initrd, ...(q.node_image !== "" ? { nodeImage: q.node_image } : {}) };
}

/**
 * A clone of template `t`: the template's shape, guest and command line (the
 * guest booted with them), a private copy-on-write view of its RAM, restored
 * from its saved state; its own run dir, 9p share, console and network.
 */
export function cloneSpec(
  cfg: HakoConfig,
  t: TemplateManifest,
  vm: Pick<VmSpec, "id" | "runDir" | "consoleLog" | "network"> & { shareDir: string },
): VmSpec {
  return {
    id: vm.id,
    runDir: vm.runDir,
    accel: t.shape.accel,
    vcpus: t.shape.vcpus,
    memoryMiB: t.shape.memoryMiB,
    ...guestBoot(cfg.hypervisor.qemu),
    kernelParams: t.kernelParams,
    sharedDirs: [{ tag: t.shareTag, hostPath: vm.shareDir }],
    consoleLog: vm.consoleLog,
    network: vm.network,
    memoryFile: { path: t.memoryFile, shared: false },
    restoreState: t.stateFile,
    tcgCacheMiB: cfg.factory.clone_tb_size,
  };
}

/**
 * Taps `tapName(0..nics-1)` in the existing netns `netns`, with the template's
 * NIC MACs: the network a template VM, or a VM cache's clone before a pod
 * takes it, starts with (QEMU needs a backend for every NIC).
 */
export async function templateTaps(netns: string, nics: number, tapName: (i: number) => string): Promise<VmNetwork> {
  const list: VmNetwork["nics"] = [];
  for (let i = 0; i < nics; i++) {
    await execFileAsync("ip", ["-n", netns, "tuntap", "add", "dev", tapName(i), "mode", "tap"]);
    list.push({ tapName: tapName(i), mac: `${TEMPLATE_MAC_PREFIX}${String(i).padStart(2, "0")}` });
  }
  return { netnsPath: `/var/run/netns/${netns}`, nics: list };
}

/** A scratch netns holding a tap per template NIC, for the template's build. */
async function scratchNetwork(name: string, nics: number): Promise<{ network: VmNetwork | undefined; remove: () => Promise<void> }> {
  if (nics === 0) return { network: undefined, remove: async () => undefined };
  await execFileAsync("ip", ["netns", "add", name]);
  const remove = async (): Promise<void> => void (await execFileAsync("ip", ["netns", "del", name]).catch(() => undefined));
  try {
    return { network: await templateTaps(name, nics, (i) => `tap${i}_hako`), remove };
  } catch (err) {
    await remove();
    throw err;
  }
}

/**
 * Boots a template VM of this shape, waits for its agent, saves it. It is
 * built in `<key>.build-<pid>` and then takes the place of an older one, so
 * that a sandbox never finds half a template, and two builds of one key
 * cannot write into the same files. `signal` stops the template VM and
 * removes the build (a `hako factory init` that gets SIGTERM).
 */
export async function createTemplate(cfg: HakoConfig, hypervisor: Hypervisor, shape: TemplateShape, log: Logger, signal?: AbortSignal): Promise<TemplateManifest> {
  const key = templateKey(cfg, shape);
  const final = shapeDir(cfg, key);
  const dir = `${final}.build-${process.pid}`;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const q = cfg.hypervisor.qemu;
  const m: TemplateManifest = {
    key,
    shape,
    created: new Date().toISOString(),
    // Where the files are once the build is renamed into place.
    memoryFile: join(final, "memory"),
    stateFile: join(final, "state"),
    // A template's clones keep its kernel parameters (the guest booted with them).
    kernelParams: templateKernelParams(shape),
    shareTag: "hakoShared",
    configSource: configSourceOf(cfg),
  };
  const shareDir = join(dir, "share");
  mkdirSync(shareDir);
  const net = await scratchNetwork(`hako-tpl-${process.pid}`, shape.nics);
  try {
    const vm = await hypervisor.start({
      id: `template-${key}`,
      runDir: dir,
      accel: shape.accel,
      vcpus: shape.vcpus,
      memoryMiB: shape.memoryMiB,
      ...guestBoot(q),
      // No hako.share: a mounted 9p export blocks migration; clones mount their own share.
      kernelParams: m.kernelParams,
      sharedDirs: [{ tag: m.shareTag, hostPath: shareDir }],
      consoleLog: join(dir, "console.log"),
      network: net.network,
      memoryFile: { path: join(dir, "memory"), shared: true },
    }, signal);
    const stopOnAbort = (): void => void vm.stop(0).catch(() => undefined);
    signal?.addEventListener("abort", stopOnAbort, { once: true });
    try {
      const agent = await connectAgentWhenReady(key, vm.agentSocketPath, cfg.agent.dial_timeout * 1000, vm.exited, signal);
      try {
        // Clones resume what the template's agent compiled: run a pod start's
        // paths once, a container included (crun spawned and waited for, the
        // OCI spec handled, the guest's cgroup and mount code paged in).
        const { warmUpMs } = await agent.agent.prepareTemplate({ runContainer: true }, { timeoutMs: 60_000 });
        log.info({ key, warmUpMs }, "template agent warmed up");
      } finally {
        agent.close();
      }
      await vm.saveState(join(dir, "state"));
      signal?.throwIfAborted();
    } finally {
      signal?.removeEventListener("abort", stopOnAbort);
      await vm.stop(2000).catch(() => undefined);
    }
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw new RuntimeError(Code.INTERNAL, key, `building the VM template failed: ${(err as Error).message}`, { cause: err, hint: "see `hako check`; templating needs QEMU's x-ignore-shared migration" });
  } finally {
    await net.remove();
  }
  rmSync(shareDir, { recursive: true, force: true });
  writeFileSync(join(dir, "manifest.json"), JSON.stringify(m, null, 2));
  // The older template moves aside first (clones keep their mappings of its
  // memory file); a sandbox starting in between boots cold.
  const old = `${final}.old-${process.pid}`;
  if (existsSync(final)) renameSync(final, old);
  renameSync(dir, final);
  rmSync(old, { recursive: true, force: true });
  log.info({ key, shape }, "VM template ready");
  return m;
}
