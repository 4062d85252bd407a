// The VM cache (docs/templating.md, "VM cache"): clones of the VM templates,
// restored and warmed up ahead of demand, that a sandbox start takes over
// instead of restoring one itself (Kata calls it VMCache).
//
// `hako factory cache` keeps [factory] vm_cache_number of them per valid
// template. It is their QEMUs' parent (it reaps them, also after a sandbox
// took one over). Each cached VM is a directory
//   <state_dir>/vm-cache/<template key>/<id>/   (".<id>" while it is filled)
// holding its QMP and agent sockets, console log, 9p share and entry.json.
// A sandbox claims one by renaming that directory into its own state
// directory: rename is atomic, so each cached VM goes to one sandbox only, and
// the daemon, which renames an entry to ".dying-<id>" before it stops it,
// never stops one a sandbox took. A cached VM with a NIC has its tap in the
// daemon's netns; the sandbox moves it into the pod netns.
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, watch, writeFileSync, type FSWatcher } from "node:fs";
import { join } from "node:path";
import type { Hypervisor, VirtualMachine, VmNetwork } from "../hypervisor/hypervisor.js";
import { procState } from "../hypervisor/qemu/vmm-process.js";
import type { HakoConfig } from "./config.js";
import { connectAgentWhenReady, type AgentClient } from "./agent-client.js";
import { execFileAsync } from "./command.js";
import { RuntimeError } from "./errors.js";
import { Code } from "../protocols/ttrpc/status.js";
import type { Logger } from "./logger.js";
import { cloneSpec, listTemplates, templateTaps, type TemplateManifest } from "./factory.js";
import { killRecordedVmm, pidMatches, tryPidFileLock } from "./state.js";
import { VirtioNinePShare } from "../resource/sharefs/virtio-9p.js";
import { nsenterRunner } from "../resource/network/netns-exec.js";

/** What a cached VM's entry.json says. */
export interface CachedVmRecord {
  /** Template key it was cloned from. */
  key: string;
  pid: number;
  /** Its taps, in the daemon's netns (`netnsPath`), in NIC order. */
  taps: string[];
  netnsPath: string;
  created: string;
  /** Restore + agent + warm-up, ms. */
  readyMs: number;
}

export const vmCacheRoot = (cfg: HakoConfig): string => join(cfg.runtime.state_dir, "vm-cache");
const ENTRY = "entry.json";
const NETNS_DIR = "/var/run/netns";
/** A refill waits until no sandbox has taken a cached VM for this long. */
const REFILL_QUIET_MS = 1500;
/** A template whose fill failed is tried again after this, doubled per failure in a row, up to FILL_RETRY_MAX_MS. */
const FILL_RETRY_MS = 5_000;
const FILL_RETRY_MAX_MS = 300_000;

/**
 * How long a template waits after its n-th failed fill in a row: each try is
 * a restore and a warm-up (most of a host core for a second or two), so a
 * template that cannot fill (a broken image, a host without room) must not
 * take the host's CPU for ever. 5, 10, 20 s … up to 5 min; a fill that works
 * starts over.
 */
export function fillRetryDelayMs(failuresInARow: number): number {
  return Math.min(FILL_RETRY_MS * 2 ** Math.max(0, failuresInARow - 1), FILL_RETRY_MAX_MS);
}
const DAEMON_PID = "daemon.pid";

/** A cached VM's entry.json, undefined if missing or unreadable (a fill that died before writing it). */
function readRecord(dir: string): CachedVmRecord | undefined {
  try {
    return JSON.parse(readFileSync(join(dir, ENTRY), "utf8")) as CachedVmRecord;
  } catch {
    return undefined;
  }
}

/** The names of the ready entries of a template (not being filled, not dying). */
function readyEntries(dir: string): string[] {
  try {
    return readdirSync(dir).filter((n) => !n.startsWith("."));
  } catch {
    return [];
  }
}

/**
 * Takes a cached VM of this template: moves its directory to `target` (which
 * must not exist) and returns its record, or undefined if none is ready. A
 * cached VM whose QEMU is gone is removed and the next one tried.
 */
export function claimCachedVm(cfg: HakoConfig, key: string, target: string): CachedVmRecord | undefined {
  const dir = join(vmCacheRoot(cfg), key);
  for (const name of readyEntries(dir)) {
    try {
      renameSync(join(dir, name), target);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") continue; // another sandbox took it
      throw new RuntimeError(Code.INTERNAL, key, `taking cached VM ${name} failed: ${(err as Error).message}`, { cause: err });
    }
    const rec = readRecord(target);
    if (rec && rec.key === key && procState(rec.pid) === "alive") return rec;
    rmSync(target, { recursive: true, force: true });
  }
  return undefined;
}

/** Ready cached VMs per template key (for `hako factory status`). */
export function cachedVmCounts(cfg: HakoConfig): Record<string, number> {
  const root = vmCacheRoot(cfg);
  const out: Record<string, number> = {};
  if (!existsSync(root)) return out;
  for (const key of readdirSync(root)) if (key !== DAEMON_PID) out[key] = readyEntries(join(root, key)).length;
  return out;
}

/** Moves a claimed cached VM's taps from the daemon's netns into the pod's; returns their names, in NIC order. */
export async function moveCachedTaps(rec: CachedVmRecord, podNetnsPath: string): Promise<string[]> {
  for (const tap of rec.taps) {
    try {
      await nsenterRunner(rec.netnsPath)("ip", ["link", "set", "dev", tap, "netns", podNetnsPath]);
    } catch (err) {
      throw new RuntimeError(Code.INTERNAL, tap, `moving cached VM tap ${tap} from ${rec.netnsPath} into ${podNetnsPath} failed: ${(err as Error).message}`, { cause: err });
    }
  }
  return rec.taps;
}

interface Held {
  key: string;
  id: string;
  vm: VirtualMachine;
  taps: string[];
  /**
   * The warm-up's agent connection, held until a sandbox takes the VM: a
   * guest agent without a host polls its port (guest CPU), and QEMU queues
   * the taker's connection behind this one, so the taker is served the
   * moment it is closed (releaseTaken).
   */
  agent?: AgentClient;
}

/**
 * The daemon behind `hako factory cache`: fills the cache one VM at a time
 * (two cores: a fill competes with pod starts), replaces what sandboxes take,
 * drops what belongs to a template that is gone or stale, and on stop() stops
 * every VM nobody took.
 */
export class VmCacheDaemon {
  private readonly root: string;
  private readonly netnsName = `hako-vmcache-${process.pid}`;
  private netnsReady = false;
  private readonly held = new Map<string, Held>();
  private stopping = false;
  private stopPromise: Promise<void> | undefined;
  private filling: Promise<unknown> = Promise.resolve();
  private wake: (() => void) | undefined;
  private readonly lastCount = new Map<string, number>();
  /** Per template: failed fills in a row, and when it may be tried again. */
  private readonly failedFills = new Map<string, { inARow: number; retryAt: number }>();
  /** inotify on each template's cache directory: a claim (rename away) releases that VM's agent at once. */
  private readonly watchers = new Map<string, FSWatcher>();
  private lastTake = 0;
  /** Frees `daemon.pid` (one daemon per state dir), once takeOver() holds it. */
  private releasePidFile: () => void = () => undefined;

  constructor(
    private readonly cfg: HakoConfig,
    private readonly hypervisor: Hypervisor,
    private readonly log: Logger,
    private readonly perTemplate = cfg.factory.vm_cache_number,
  ) {
    this.root = vmCacheRoot(cfg);
  }

  /** Runs until stop(): keeps every valid template's cache full. */
  async run(onFilled?: (key: string, rec: CachedVmRecord) => void): Promise<void> {
    await this.takeOver();
    while (!this.stopping) {
      this.releaseTaken(); // also without an inotify event (a watcher that failed)
      const templates = listTemplates(this.cfg).filter((t) => t.valid);
      this.dropStale(new Set(templates.map((t) => t.key)));
      const counts = new Map(templates.map((t) => [t.key, readyEntries(join(this.root, t.key)).length]));
      for (const [key, n] of counts) {
        if (n < (this.lastCount.get(key) ?? 0)) this.lastTake = Date.now();
        this.lastCount.set(key, n);
      }
      // Refill after a quiet spell: on two cores a restore next to a starting pod slows that pod down.
      const now = Date.now();
      const quiet = now - this.lastTake >= REFILL_QUIET_MS;
      const short = quiet ? templates.find((t) => counts.get(t.key)! < this.perTemplate && (this.failedFills.get(t.key)?.retryAt ?? 0) <= now) : undefined;
      if (short) {
        try {
          const fill = this.fill(short);
          this.filling = fill.catch(() => undefined);
          const rec = await fill;
          this.failedFills.delete(short.key);
          onFilled?.(short.key, rec);
        } catch (err) {
          if (this.stopping) break;
          const inARow = (this.failedFills.get(short.key)?.inARow ?? 0) + 1;
          const delay = fillRetryDelayMs(inARow);
          this.failedFills.set(short.key, { inARow, retryAt: Date.now() + delay });
          this.log.error({ err, template: short.key, failuresInARow: inARow }, `filling the VM cache failed; this template is tried again in ${Math.round(delay / 1000)} s`);
        }
        continue;
      }
      await this.sleep(250);
    }
  }

  /** Stops filling, then stops every cached VM no sandbox took, and removes the daemon's netns. Idempotent. */
  stop(): Promise<void> {
    this.stopping = true;
    this.wake?.();
    this.stopPromise ??= this.filling.then(() => this.stopAll());
    return this.stopPromise;
  }

  /** Resolves when a stop() has finished (at once if none was asked for). */
  get stopped(): Promise<void> {
    return this.stopPromise ?? Promise.resolve();
  }

  private async stopAll(): Promise<void> {
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
    await Promise.all([...this.held.values()].map((h) => this.retire(h)));
    const taken = [...this.held.values()].filter((h) => procState(h.vm.pid) === "alive").length;
    if (taken > 0) this.log.warn({ taken }, "sandboxes still run VMs from the cache; this daemon was their parent");
    if (this.netnsReady) await execFileAsync("ip", ["netns", "del", this.netnsName]).catch(() => undefined);
    this.releasePidFile();
    for (const key of existsSync(this.root) ? readdirSync(this.root) : []) {
      const dir = join(this.root, key);
      if (readdirSync(dir).length === 0) rmSync(dir, { recursive: true, force: true });
    }
    if (existsSync(this.root) && readdirSync(this.root).length === 0) rmSync(this.root, { recursive: true, force: true });
  }

  /** One daemon per state dir; what an earlier one left (it died) is stopped and removed. */
  private async takeOver(): Promise<void> {
    mkdirSync(this.root, { recursive: true, mode: 0o700 });
    const lock = tryPidFileLock(join(this.root, DAEMON_PID), "factory");
    if (!lock.held)
      throw new RuntimeError(Code.ALREADY_EXISTS, "vm-cache", `a VM cache daemon (pid ${lock.holder}) already serves ${this.cfg.runtime.state_dir}`, { hint: `stop it first (kill ${lock.holder})` });
    this.releasePidFile = lock.release;
    // The netns of a daemon that died (its name carries its pid).
    for (const ns of existsSync(NETNS_DIR) ? readdirSync(NETNS_DIR) : []) {
      const m = /^hako-vmcache-(\d+)$/.exec(ns);
      if (m && Number(m[1]) !== process.pid && !pidMatches(Number(m[1]), "factory")) void execFileAsync("ip", ["netns", "del", ns]).catch(() => undefined);
    }
    for (const key of readdirSync(this.root)) {
      if (key === DAEMON_PID) continue;
      for (const name of readdirSync(join(this.root, key))) {
        // A leftover cached VM: stopped by its recorded pid (if that is still a QEMU), its directory removed.
        const dir = join(this.root, key, name);
        const rec = readRecord(dir);
        if (rec) await killRecordedVmm(rec.pid);
        rmSync(dir, { recursive: true, force: true });
      }
    }
  }

  private dropStale(valid: Set<string>): void {
    for (const h of this.held.values()) {
      // retire() settles on its own (errors are caught there); nothing waits for it here.
      if (!valid.has(h.key) && this.retire(h)) this.log.info({ template: h.key, id: h.id }, "template gone or stale: stopping its cached VM");
    }
    // A stale template's directory is watched no longer once none of its VMs is held.
    const heldKeys = new Set([...this.held.values()].map((h) => h.key));
    for (const [key, w] of this.watchers) {
      if (valid.has(key) || heldKeys.has(key)) continue;
      w.close();
      this.watchers.delete(key);
    }
  }

  /**
   * Stops a cached VM no sandbox has taken: renames its entry to
   * `.dying-<id>` first (a sandbox's claim and this rename cannot both win),
   * then SIGTERM (released: no monitor connection; SIGTERM is QEMU's clean
   * quit) and removes the entry. Undefined if a sandbox took it (or it is
   * still being filled: the fill stops it).
   */
  private retire(h: Held): Promise<void> | undefined {
    const dying = join(this.root, h.key, `.dying-${h.id}`);
    try {
      renameSync(join(this.root, h.key, h.id), dying);
    } catch {
      return undefined;
    }
    this.releaseAgent(h);
    return h.vm
      .stop(0)
      .then(() => undefined, () => undefined)
      .then(() => rmSync(dying, { recursive: true, force: true }));
  }

  private async network(id: string, nics: number): Promise<VmNetwork | undefined> {
    if (nics === 0) return undefined;
    if (!this.netnsReady) {
      await execFileAsync("ip", ["netns", "add", this.netnsName]);
      this.netnsReady = true;
    }
    return templateTaps(this.netnsName, nics, (i) => `hkc${id}${i}`);
  }

  /** Restores one clone of `t`, warms it up, releases it and publishes it. */
  private async fill(t: TemplateManifest): Promise<CachedVmRecord> {
    const t0 = Date.now();
    const id = randomBytes(4).toString("hex");
    const filling = join(this.root, t.key, `.${id}`);
    // Its 9p export (created here, with the entry's directory).
    const share = new VirtioNinePShare(`vmcache-${id}`, join(filling, "shared"), this.cfg.hypervisor.qemu.msize_9p);
    let vm: VirtualMachine | undefined;
    let network: VmNetwork | undefined;
    let agent: AgentClient | undefined;
    try {
      network = await this.network(id, t.shape.nics);
      vm = await this.hypervisor.start(cloneSpec(this.cfg, t, { id: `vmcache-${id}`, runDir: filling, shareDir: share.hostDir, consoleLog: join(filling, "console.log"), network }));
      agent = await connectAgentWhenReady(id, vm.agentSocketPath, this.cfg.agent.dial_timeout * 1000, vm.exited);
      // The clone translates (TCG) and touches what a pod start runs now, not on the pod's clock.
      await agent.agent.prepareTemplate({ runContainer: true }, { timeoutMs: 60_000 });
      // Its share is its own for life (the directory moves with the VM), so it is mounted now,
      // and the clock set: the pod's CreateSandbox finds both done (no `mount`, no `date`).
      await agent.agent.createSandbox({
        sandboxId: `vmcache-${id}`,
        hostname: "",
        storages: [share.guestStorage()],
        hostTimeUnixNano: BigInt(Date.now()) * 1_000_000n,
      });
      const rec: CachedVmRecord = {
        key: t.key,
        pid: vm.pid,
        taps: network?.nics.map((n) => n.tapName) ?? [],
        netnsPath: network?.netnsPath ?? "",
        created: new Date().toISOString(),
        readyMs: Date.now() - t0,
      };
      writeFileSync(join(filling, ENTRY), JSON.stringify(rec));
      if (this.stopping) throw new RuntimeError(Code.CANCELLED, id, "the VM cache is stopping");
      vm.release();
      const held: Held = { key: t.key, id, vm, taps: rec.taps, agent };
      this.held.set(id, held);
      void vm.exited.then(() => this.onExit(held));
      this.watchKey(t.key);
      renameSync(filling, join(this.root, t.key, id));
      this.log.info({ template: t.key, id, pid: vm.pid, readyMs: rec.readyMs }, "cached VM ready");
      return rec;
    } catch (err) {
      agent?.close();
      if (vm) await vm.stop(2000).catch(() => undefined);
      else for (const n of network?.nics ?? []) await execFileAsync("ip", ["-n", this.netnsName, "link", "del", n.tapName]).catch(() => undefined);
      rmSync(filling, { recursive: true, force: true });
      throw err;
    }
  }

  /** A cached VM exited: if no sandbox had taken it, its entry goes too. */
  private onExit(h: Held): void {
    this.releaseAgent(h);
    this.held.delete(h.id);
    const dir = join(this.root, h.key, h.id);
    if (existsSync(dir)) {
      this.log.warn({ template: h.key, id: h.id }, "a cached VM exited before any sandbox took it");
      rmSync(dir, { recursive: true, force: true });
    }
    // Its tap, if it never left this netns, is persistent: remove it.
    for (const tap of this.netnsReady ? h.taps : []) void execFileAsync("ip", ["-n", this.netnsName, "link", "del", tap]).catch(() => undefined);
    this.wake?.();
  }

  /** Closes the agent connection of every cached VM whose entry is gone (a sandbox took it, or it is retiring). */
  private releaseTaken(): void {
    for (const h of this.held.values()) {
      if (h.agent === undefined || existsSync(join(this.root, h.key, h.id))) continue;
      this.releaseAgent(h);
      this.log.debug({ template: h.key, id: h.id }, "cached VM taken: its agent connection released");
    }
  }

  /** Lets go of a cached VM's warm-up agent connection (its taker, if any, is served next). */
  private releaseAgent(h: Held): void {
    h.agent?.close();
    h.agent = undefined;
  }

  private watchKey(key: string): void {
    if (this.watchers.has(key)) return;
    try {
      const w = watch(join(this.root, key), () => this.releaseTaken());
      w.on("error", () => {
        w.close();
        this.watchers.delete(key);
      });
      this.watchers.set(key, w);
    } catch (err) {
      this.log.warn({ err, template: key }, "cannot watch the VM cache directory; claims are noticed within 250 ms");
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(t);
        this.wake = undefined;
        resolve();
      };
    });
  }
}
