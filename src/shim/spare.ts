// Spare shim daemons: a node process with every module of `serve` already
// loaded, waiting for the next pod of one containerd namespace.
//
// containerd runs `start` for a pod's first task, and the pod's shim daemon
// is a new node process: node's own start-up and loading the shim's modules
// cost ~110 ms here, on the pod-start path, before the VM is even asked for.
// A serving shim therefore leaves a spare behind (`[runtime] shim_spares`),
// and the launcher's `start` (start-fast-path.sh) hands the next pod to it:
//
//   <socket dir>/hako-spare-<hex(sha256("<-address>/<namespace>"))>/
//     slot-<i>.pid       one per spare (tryPidFileLock): at most shim_spares of them
//     ready-<pid>        a fifo the spare reads; a `start` claims the spare by
//                        renaming it to claimed-<pid> (rename is atomic: one wins)
//     req-<pid>          the claimer's request: the `serve` argv, NUL-separated
//     req-<pid>.opts     containerd's runtime options (the `start`'s stdin)
//
// The claimer writes the request's path into the fifo and waits until the
// pod's socket listens, as for a daemon it spawned; if the spare dies first
// it spawns one itself. A spare lives as long as its containerd: it holds a
// connection to containerd's ttrpc socket (TTRPC_ADDRESS) and exits when that
// closes. One claimed but never sent a request exits after CLAIM_WAIT_MS.
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { constants, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, rmSync, statSync, watch, type FSWatcher } from "node:fs";
import net from "node:net";
import { setPriority } from "node:os";
import path from "node:path";
import type { Logger } from "../runtime/logger.js";
import { tryPidFileLock, type PidFileLock } from "../runtime/state.js";
import { socketDir, socketPathOf } from "./address.js";
import { formatShimFlags, parseShimFlags, type ShimFlags } from "./flags.js";
import { openLogFd } from "./start.js";

export const SPARE_DIR_PREFIX = "hako-spare-";
/** The `-id` a spare runs with (containerd's `-id` comes with the request). */
export const SPARE_ID = "hako-spare";
/** How long a claimed spare waits for its request before it gives up. */
export const CLAIM_WAIT_MS = 5000;
/** What a spare's command line (and so its slot's pid file) is recognised by. */
const SHIM_NEEDLE = "containerd-shim-hako-v2";

/** The spare directory of one containerd (its `-address`) and namespace. */
export function spareDir(containerdAddress: string, namespace: string, dir: string = socketDir()): string {
  const digest = createHash("sha256").update(path.posix.join(containerdAddress, namespace)).digest("hex");
  return path.posix.join(dir, `${SPARE_DIR_PREFIX}${digest}`);
}

/** Pids of the spares waiting (not claimed) in `dir`. */
export function readySpares(dir: string): number[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names.filter((n) => /^ready-\d+$/.test(n)).map((n) => Number(n.slice("ready-".length)));
}

export interface SpareHandOver {
  /** The pod's `serve` flags, as the launcher would have passed them to a daemon it spawned. */
  flags: ShimFlags;
  /** containerd's runtime options (protobuf Any), from the `start`'s stdin. */
  runtimeOptions: Uint8Array;
}

/** Reads a claimer's request (`req-<pid>` and `req-<pid>.opts`); throws if it is not a `serve` of this spare's containerd and namespace. */
export function readHandOver(requestPath: string, spare: ShimFlags): SpareHandOver {
  const argv = readFileSync(requestPath, "utf8").split("\0");
  if (argv.at(-1) === "") argv.pop();
  const flags = parseShimFlags(argv, "/");
  if (flags.action !== "serve") throw new Error(`request ${requestPath} is for "${flags.action}", not serve`);
  if (flags.namespace !== spare.namespace || flags.address !== spare.address) {
    throw new Error(`request ${requestPath} is for namespace ${flags.namespace} of ${flags.address}, this spare serves ${spare.namespace} of ${spare.address}`);
  }
  if (flags.socket === "") throw new Error(`request ${requestPath} has no -socket`);
  let runtimeOptions: Uint8Array = new Uint8Array(0);
  try {
    runtimeOptions = readFileSync(`${requestPath}.opts`);
  } catch {
    /* no options: the default configuration */
  }
  return { flags, runtimeOptions };
}

/** Fifos of spares that were killed (no exit of their own removed them). */
function removeDeadSpares(dir: string): void {
  for (const name of readdirSync(dir)) {
    const m = /^(?:ready|claimed)-(\d+)$/.exec(name);
    if (m !== null && !existsSync(`/proc/${m[1]}`)) rmSync(path.join(dir, name), { force: true });
  }
}

/** Removes a spare directory left empty (its last spare served or went away); the next spare makes it again. */
function removeIfEmpty(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    /* other spares wait, or a claimer's request is still there */
  }
}

/** The main module's identity: a spare whose code was replaced since it started (an upgrade) refuses to serve. */
function moduleStamp(): string {
  try {
    const st = statSync(process.argv[1] ?? "");
    return `${st.ino}:${st.mtimeMs}`;
  } catch {
    return "";
  }
}

/**
 * The `spare` action: loads the daemon's modules, takes a slot, waits for a
 * claim, then serves the claimer's pod. Resolves only if it never serves
 * (the exit code); a spare that serves lives on as that pod's shim.
 */
export async function runSpare(flags: ShimFlags): Promise<number> {
  const slots = Number(flags.rest[0] ?? "1");
  const ttrpcPath = socketPathOf(process.env.TTRPC_ADDRESS ?? "");
  if (!Number.isInteger(slots) || slots < 1 || ttrpcPath === "") return 0;
  const stamp = moduleStamp();
  const { serveShim } = await import("./serve.js");

  const dir = spareDir(flags.address, flags.namespace);
  let held: Extract<PidFileLock, { held: true }> | undefined;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (let i = 0; i < slots && held === undefined; i++) {
      const l = tryPidFileLock(path.join(dir, `slot-${i}.pid`), SHIM_NEEDLE);
      if (l.held) held = l;
    }
  } catch {
    return 0; // the directory went with the last spare just now: the next shim leaves one
  }
  if (held === undefined) return 0; // enough spares already
  removeDeadSpares(dir);
  const ready = path.join(dir, `ready-${process.pid}`);
  const claimed = path.join(dir, `claimed-${process.pid}`);
  try {
    execFileSync("mkfifo", ["-m", "600", ready], { stdio: "ignore" });
  } catch {
    held.release();
    return 1;
  }
  // Read and write end in one: no EOF while no claimer has it open, and a
  // claimer's write never blocks.
  const fifo = new net.Socket({ fd: openSync(ready, constants.O_RDWR | constants.O_NONBLOCK), readable: true, writable: false });

  return new Promise<number>((resolve) => {
    let watcher: FSWatcher | undefined;
    let claimTimer: NodeJS.Timeout | undefined;
    let done = false;
    const containerd = net.createConnection(ttrpcPath);
    /** No longer a spare: served a pod, or exits. */
    const leave = (): void => {
      done = true;
      clearTimeout(claimTimer);
      watcher?.close();
      containerd.destroy();
      fifo.destroy();
      rmSync(ready, { force: true });
      rmSync(claimed, { force: true });
      held.release();
      removeIfEmpty(dir);
    };
    const finish = (code: number): void => {
      if (done) return;
      leave();
      resolve(code);
    };
    // containerd gone (or never there): nobody will claim this spare.
    containerd.on("error", () => finish(0));
    containerd.on("close", () => finish(0));
    containerd.unref();
    for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"] as const) process.once(sig, () => finish(0));
    // A claim renames the fifo: its request must follow.
    try {
      watcher = watch(dir, () => {
        if (claimTimer === undefined && !existsSync(ready)) claimTimer = setTimeout(() => finish(1), CLAIM_WAIT_MS);
      });
    } catch {
      /* without the watch an unfinished claim lasts until containerd goes */
    }
    let line = "";
    fifo.on("data", (chunk: Buffer) => {
      line += chunk.toString("utf8");
      const nl = line.indexOf("\n");
      if (nl < 0 || done) return;
      const requestPath = line.slice(0, nl);
      let handOver: SpareHandOver;
      try {
        if (path.dirname(requestPath) !== dir) throw new Error(`request ${requestPath} is outside ${dir}`);
        if (moduleStamp() !== stamp) throw new Error("the shim was replaced since this spare started");
        handOver = readHandOver(requestPath, flags);
      } catch {
        finish(1); // the claimer sees this spare gone and spawns a daemon itself
        return;
      }
      leave();
      // Now the pod's daemon, as if the launcher had spawned it: its command
      // line (ps) names the pod, cwd the bundle, logs on its `log` fifo, and
      // the CPU priority of one.
      process.title = servingTitle(handOver.flags);
      try {
        setPriority(0);
      } catch {
        /* stays niced: its CPU share shrinks only while the host is busy */
      }
      try {
        process.chdir(handOver.flags.bundle);
      } catch {
        /* serve reports what it cannot find */
      }
      serveShim(handOver.flags, { runtimeOptions: handOver.runtimeOptions, logFd: openLogFd(handOver.flags.bundle) }).catch(() => process.exit(1));
    });
  });
}

/**
 * What `ps` shows for a spare that took a pod: the daemon's command line,
 * within the room the spare's own argv left (TITLE_ROOM).
 */
export function servingTitle(flags: ShimFlags): string {
  const words = [process.argv0, process.argv[1] ?? "", ...formatShimFlags({ ...flags, bundle: "", socket: "", publishBinary: "" }, "serve")];
  return words.join(" ").slice(0, TITLE_ROOM);
}

/** Room for servingTitle(): the blank argument a spare is started with reserves it. */
const TITLE_ROOM = 256;

/**
 * Starts a spare for the next pod of this shim's containerd and namespace
 * unless `slots` spares already wait. Detached, at the lowest CPU priority
 * (this shim's pod may still be starting), with the environment containerd
 * gave the shim.
 */
export function spawnSpare(flags: ShimFlags, slots: number, env: NodeJS.ProcessEnv, execArgv: readonly string[], log: Logger): void {
  if (slots < 1 || !env.TTRPC_ADDRESS) return;
  if (readySpares(spareDir(flags.address, flags.namespace)).length >= slots) return;
  const args = [
    ...execArgv,
    process.argv[1] ?? "",
    ...formatShimFlags({ ...flags, id: SPARE_ID, bundle: "", socket: "", rest: [] }, "spare"),
    String(slots),
    " ".repeat(TITLE_ROOM), // room for the command line it shows once it serves a pod
  ];
  // Through sh, which exits at once: the spare is no child of this shim (nor
  // of its pod), but an orphan like every shim daemon, adopted by
  // containerd's subreaper or init. Without `nice`, at normal priority.
  const child = spawn("/bin/sh", ["-c", 'if command -v nice >/dev/null; then nice -n 19 "$@" & else "$@" & fi', "sh", process.execPath, ...args], {
    cwd: "/",
    env,
    detached: true,
    stdio: "ignore",
  });
  child.once("error", (err) => log.warn({ err }, "could not start a spare shim"));
  child.unref();
}
