// A private containerd (Debian's 1.6.20) for integration tests: its own root,
// state, sockets and opt dir in a fresh temp dir; our build/bin first on its
// PATH so `--runtime io.containerd.hako.v2` finds containerd-shim-hako-v2.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { BUSYBOX_REF, busyboxImageTar } from "./oci-image.js";
import { pidAlive as alive } from "../../src/runtime/state.js";
import { mountsUnder } from "../../src/resource/mounts.js";
import { pidsMatching, podShimPids, runToEnd, type RunResult } from "./processes.js";

export { mountsUnder, pidsMatching, podShimPids };

export const REPO = resolve(import.meta.dirname, "..", "..");
export const CONTAINERD_TMP_PREFIX = "hako-test-containerd-";
const CONTAINERD_BIN = "containerd";
const CTR_BIN = "ctr";
const RUNC_STATE_ROOT = "/run/containerd/runc";
/** Keep at most this much daemon output (the tail) for logs(). */
const LOG_LIMIT = 8 * 1024 * 1024;

export type CtrResult = RunResult;

export interface CtrOptions {
  input?: Buffer | string;
  timeoutMs?: number;
}

export interface StartContainerdOptions {
  /** Namespace ctr() and ctrSpawn() use; default "default" (ctr's own default). */
  namespace?: string;
  /** Extra environment for containerd (and so for the shims it starts). */
  env?: Record<string, string>;
  /**
   * Enables the CRI plugin: returns the TOML of its section, given the
   * harness's temp dir (see cri-containerd.ts).
   */
  criConfig?: (dir: string) => string;
  /** Runs at stop(), after the daemon and its shims are gone, before the temp dir is removed. */
  afterStop?: (dir: string) => void | Promise<void>;
}

export interface Containerd {
  /** The temp dir holding everything below. */
  dir: string;
  root: string;
  state: string;
  /** gRPC socket path (no unix:// prefix). */
  address: string;
  ttrpcAddress: string;
  namespace: string;
  configPath: string;
  /** PID of the running containerd (changes on restart()). */
  pid(): number | undefined;
  ctr(args: string[], opts?: CtrOptions): Promise<CtrResult>;
  ctrSpawn(args: string[]): ChildProcess;
  restart(): Promise<void>;
  stop(): Promise<void>;
  logs(): string;
}

function tomlString(s: string): string {
  return JSON.stringify(s);
}

function configToml(p: { root: string; state: string; address: string; ttrpcAddress: string; opt: string; cri: string | undefined }): string {
  // The other snapshotters only log init errors on this host.
  const disabled = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"];
  if (p.cri === undefined) disabled.unshift("io.containerd.grpc.v1.cri");
  return [
    "version = 2",
    `root = ${tomlString(p.root)}`,
    `state = ${tomlString(p.state)}`,
    `disabled_plugins = [${disabled.map(tomlString).join(", ")}]`,
    "",
    "[grpc]",
    `  address = ${tomlString(p.address)}`,
    "",
    "[ttrpc]",
    `  address = ${tomlString(p.ttrpcAddress)}`,
    "",
    "[debug]",
    '  level = "info"',
    "",
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${tomlString(p.opt)}`,
    "",
    p.cri ?? "",
  ].join("\n");
}

function daemonEnv(extra: Record<string, string> | undefined): NodeJS.ProcessEnv {
  const path = [join(REPO, "build", "bin"), ...(process.env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(":")];
  // A `#!/usr/bin/env node` shim needs this node on containerd's PATH.
  const nodeDir = dirname(process.execPath);
  if (!path.includes(nodeDir)) path.push(nodeDir);
  const env: NodeJS.ProcessEnv = { PATH: path.join(":") };
  if (process.env.HAKO_CONFIG) env.HAKO_CONFIG = process.env.HAKO_CONFIG;
  return { ...env, ...extra };
}



function runCtr(address: string, namespace: string, args: string[], opts: CtrOptions = {}): Promise<CtrResult> {
  return runToEnd(CTR_BIN, ["--address", address, "--namespace", namespace, ...args], opts);
}

/** Starts a private containerd and waits until `ctr version` answers. */
export async function startContainerd(opts: StartContainerdOptions = {}): Promise<Containerd> {
  const namespace = opts.namespace ?? "default";
  const dir = mkdtempSync(join(tmpdir(), CONTAINERD_TMP_PREFIX));
  const root = join(dir, "root");
  const state = join(dir, "state");
  const opt = join(dir, "opt");
  const address = join(dir, "c.sock");
  const ttrpcAddress = join(dir, "c.sock.ttrpc");
  const configPath = join(dir, "config.toml");
  for (const d of [root, state, opt]) mkdirSync(d, { mode: 0o711 });
  writeFileSync(configPath, configToml({ root, state, address, ttrpcAddress, opt, cri: opts.criConfig?.(dir) }));
  const env = daemonEnv(opts.env);
  // runc (via containerd-shim-runc-v2) keeps container state in the FIXED dir
  // /run/containerd/runc/<namespace>; remove it at stop() only if we made it and it is empty.
  const runcNsDir = join(RUNC_STATE_ROOT, namespace);
  const runcNsDirExisted = existsSync(runcNsDir);

  const log: Buffer[] = [];
  let logBytes = 0;
  const appendLog = (b: Buffer): void => {
    log.push(b);
    logBytes += b.length;
    while (logBytes > LOG_LIMIT && log.length > 1) logBytes -= log.shift()!.length;
  };
  const note = (s: string): void => appendLog(Buffer.from(`[harness] ${s}\n`));

  let proc: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let stopped = false;
  const onExit = (): void => {
    // Test process is going away without stop(): do not leave a daemon behind.
    if (proc?.pid !== undefined && proc.exitCode === null && proc.signalCode === null) {
      try {
        process.kill(proc.pid, "SIGKILL");
      } catch {
        /* gone */
      }
    }
  };
  process.on("exit", onExit);

  const ctr = (args: string[], o?: CtrOptions): Promise<CtrResult> => runCtr(address, namespace, args, o);

  const launch = async (): Promise<void> => {
    const t0 = Date.now();
    const child = spawn(CONTAINERD_BIN, ["--config", configPath], { env, cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    proc = child;
    let spawnError: Error | undefined;
    child.on("error", (e) => (spawnError = e));
    child.stdout!.on("data", appendLog);
    child.stderr!.on("data", appendLog);
    exited = new Promise((r) => child.once("exit", (code, sig) => (note(`containerd ${child.pid} exited: ${code ?? sig}`), r())));
    // Let a forgotten stop() not hang the test runner (the exit hook kills it).
    child.unref();
    (child.stdout as unknown as { unref?: () => void }).unref?.();
    (child.stderr as unknown as { unref?: () => void }).unref?.();
    const deadline = Date.now() + 30_000;
    let last = "";
    for (;;) {
      if (spawnError) throw new Error(`cannot start containerd: ${spawnError.message}`);
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`containerd exited during startup (${child.exitCode ?? child.signalCode}):\n${Buffer.concat(log).toString()}`);
      }
      if (existsSync(address)) {
        const r = await runCtr(address, namespace, ["version"], { timeoutMs: 5_000 }).catch((e: Error) => ({ status: -1, stderr: e.message }));
        if (r.status === 0) break;
        last = r.stderr;
      }
      if (Date.now() > deadline) {
        throw new Error(`containerd not ready after 30 s (last ctr version: ${last}):\n${Buffer.concat(log).toString()}`);
      }
      await sleep(20);
    }
    note(`containerd ${child.pid} ready in ${Date.now() - t0} ms`);
  };

  const terminate = async (): Promise<void> => {
    const child = proc;
    if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    const timeout = new AbortController();
    const done = await Promise.race([
      exited.then(() => true),
      sleep(10_000, false, { signal: timeout.signal }).catch(() => true),
    ]);
    timeout.abort();
    if (!done) {
      note(`containerd ${child.pid} ignored SIGTERM for 10 s: SIGKILL`);
      child.kill("SIGKILL");
      await exited;
    }
  };

  /** Kills and deletes every task and container in every namespace. */
  const removeAllContainers = async (): Promise<void> => {
    const nsList = await runCtr(address, namespace, ["namespaces", "ls", "-q"], { timeoutMs: 15_000 });
    const namespaces = new Set([namespace, ...nsList.stdout.toString().split("\n").filter(Boolean)]);
    for (const ns of namespaces) {
      const run = (args: string[]): Promise<CtrResult> =>
        runCtr(address, ns, args, { timeoutMs: 30_000 }).catch((e: Error) => ({ status: -1, signal: null, stdout: Buffer.alloc(0), stderr: e.message }));
      const ls = await run(["containers", "ls", "-q"]);
      const ids = ls.stdout.toString().split("\n").filter(Boolean);
      await Promise.all(
        ids.map(async (id) => {
          await run(["tasks", "kill", "-s", "KILL", id]);
          const del = await run(["tasks", "delete", "-f", id]);
          if (del.status !== 0 && !/not found/i.test(del.stderr)) note(`ctr -n ${ns} tasks delete -f ${id}: ${del.stderr.trim()}`);
          const cdel = await run(["containers", "delete", id]);
          if (cdel.status !== 0) note(`ctr -n ${ns} containers delete ${id}: ${cdel.stderr.trim()}`);
        }),
      );
    }
  };

  const unmountAll = (): void => {
    for (const m of mountsUnder(dir)) {
      if (spawnSync("umount", [m], { stdio: "ignore" }).status !== 0) {
        note(`umount ${m} failed: lazy unmount`);
        spawnSync("umount", ["-l", m], { stdio: "ignore" });
      }
    }
  };

  const c: Containerd = {
    dir,
    root,
    state,
    address,
    ttrpcAddress,
    namespace,
    configPath,
    pid: () => proc?.pid,
    ctr,
    ctrSpawn: (args: string[]) => spawn(CTR_BIN, ["--address", address, "--namespace", namespace, ...args], { stdio: ["pipe", "pipe", "pipe"] }),
    restart: async () => {
      if (stopped) throw new Error("containerd harness already stopped");
      await terminate();
      await launch();
    },
    stop: async () => {
      if (stopped) return;
      stopped = true;
      try {
        if (proc && proc.exitCode === null && proc.signalCode === null) {
          await removeAllContainers().catch((e: Error) => note(`cleanup: ${e.message}`));
        }
        await terminate();
        // Shims serving our daemon (started with `-address <our socket>`): normally
        // gone after their tasks were deleted, and a spare shim exits when
        // containerd does (give it 3 s); kill stragglers by PID.
        for (let i = 0; i < 150 && pidsMatching(address).some(alive); i++) await sleep(20);
        for (const pid of pidsMatching(address)) {
          note(`killing leftover shim ${pid}`);
          try {
            process.kill(pid, "SIGKILL");
          } catch {
            /* gone */
          }
        }
        for (let i = 0; i < 100 && pidsMatching(address).some(alive); i++) await sleep(20);
        unmountAll();
        if (opts.afterStop) await Promise.resolve(opts.afterStop(dir)).catch((e: Error) => note(`afterStop: ${e.message}`));
        rmSync(dir, { recursive: true, force: true });
        if (!runcNsDirExisted) {
          try {
            rmdirSync(runcNsDir);
          } catch {
            /* absent, or in use by another containerd */
          }
        }
      } finally {
        process.off("exit", onExit);
      }
    },
    logs: () => Buffer.concat(log).toString(),
  };

  try {
    await launch();
  } catch (e) {
    await c.stop().catch(() => undefined);
    throw e;
  }
  return c;
}

/** Imports a (cached, locally built) busybox image into `c`'s namespace; returns its ref. */
export async function importBusybox(c: Containerd, ref = BUSYBOX_REF, cmd?: string[]): Promise<string> {
  const tar = await busyboxImageTar(ref, cmd);
  const r = await c.ctr(["images", "import", tar], { timeoutMs: 120_000 });
  if (r.status !== 0) throw new Error(`ctr images import ${tar} failed (${r.status}): ${r.stderr}\n${r.stdout.toString()}`);
  const ls = await c.ctr(["images", "ls", "-q"]);
  const refs = ls.stdout.toString().split("\n").filter(Boolean);
  if (!refs.includes(ref)) throw new Error(`image ${ref} missing after import; have: ${refs.join(", ")}; import said: ${r.stdout.toString()}`);
  return ref;
}
