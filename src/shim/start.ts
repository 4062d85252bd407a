// `containerd-shim-hako-v2 -namespace NS -address SOCK -publish-binary BIN -id ID start`
// (cwd = bundle). Prints the shim's ttrpc address and exits 0; containerd
// reads stdout+stderr combined, so nothing else may be printed on success.
// One shim serves a whole pod: if the group's socket already accepts
// connections this only records the address in the bundle. Otherwise it
// spawns the daemon (`… serve`) detached, with its output on the bundle's
// `log` fifo, and waits until the daemon accepts connections.
import { spawn } from "node:child_process";
import { closeSync, constants, openSync, readFileSync } from "node:fs";
import path from "node:path";
import { isatty } from "node:tty";
import { Code } from "../protocols/ttrpc/status.js";
import { RuntimeError } from "../runtime/errors.js";
import { isSocketConnectable, readGroupId, shimSocketAddress, writeAddressFile } from "./address.js";
import { writeAll } from "./fd-write.js";
import { formatShimFlags, type ShimFlags } from "./flags.js";

export interface RuntimeOptions {
  typeUrl: string;
  configPath: string;
}

export interface StartOptions {
  /** Encoded runtime options (protobuf Any); default: everything on fd 0. */
  stdin?: Uint8Array;
  /**
   * Program and leading arguments that run the daemon; the shim flags with
   * `-socket` and the `serve` action are appended. Default: this node, its
   * exec arguments and this script.
   */
  daemon?: { command: string; args: string[] };
  /** How long to wait for the daemon's socket (default 10 s). */
  timeoutMs?: number;
  /** Poll interval while waiting (default 20 ms). */
  pollMs?: number;
  /** Extra environment for the daemon. */
  env?: Record<string, string>;
}

export interface StartResult {
  /** `unix:///run/containerd/s/<sha256>`. */
  address: string;
  /** True if a running shim of the same group was found (nothing spawned). */
  reused: boolean;
  /** PID of the spawned daemon. */
  daemonPid?: number;
}

/**
 * Decodes the runtime options containerd writes on `start`'s stdin: a
 * protobuf Any holding runtimeoptions.v1.Options. Empty input, other option
 * types and undecodable input yield undefined. The protobuf runtime is loaded
 * here, not with the module: a `start` that finds its group's shim running
 * (every container of a pod after the first) needs none of it.
 */
export async function decodeRuntimeOptions(bytes: Uint8Array): Promise<RuntimeOptions | undefined> {
  if (bytes.length === 0) return undefined;
  return (await import("./runtime-options.js")).decodeOptionsAny(bytes);
}

/** Reads all of stdin (containerd: a pipe or /dev/null); a terminal or an error yields nothing. */
export function readStdinBytes(): Uint8Array {
  try {
    if (isatty(0)) return new Uint8Array(0);
    return readFileSync(0);
  } catch {
    return new Uint8Array(0);
  }
}

/** Opens the bundle's `log` fifo for the daemon without blocking; undefined if absent or unreadable. */
export function openLogFd(bundle: string): number | undefined {
  try {
    return openSync(path.join(bundle, "log"), constants.O_WRONLY | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
}

/**
 * This node's exec arguments for the daemon, with bare `--import` specifiers
 * (e.g. `tsx` in development) resolved to URLs: the daemon's cwd is the
 * bundle, where they would not resolve. The bundled shim has none.
 */
export function daemonExecArgv(execArgv: readonly string[] = process.execArgv): string[] {
  const resolve = (spec: string): string => {
    if (/^(\.{0,2}\/|[a-z]+:)/.test(spec)) return spec;
    try {
      return import.meta.resolve(spec);
    } catch {
      return spec;
    }
  };
  const out: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const a = execArgv[i]!;
    if ((a === "--import" || a === "--loader" || a === "--experimental-loader") && i + 1 < execArgv.length) {
      out.push(a, resolve(execArgv[++i]!));
    } else if (/^--(import|loader|experimental-loader)=/.test(a)) {
      const eq = a.indexOf("=");
      out.push(`${a.slice(0, eq)}=${resolve(a.slice(eq + 1))}`);
    } else {
      out.push(a);
    }
  }
  return out;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Starts (or finds) the group's shim daemon; throws a RuntimeError on failure. */
export async function startShim(flags: ShimFlags, options: StartOptions = {}): Promise<StartResult> {
  const bundle = flags.bundle;
  const stdin = options.stdin ?? readStdinBytes();
  const group = await readGroupId(bundle, flags.id);
  const address = shimSocketAddress(flags.address, flags.namespace, group);

  if (await isSocketConnectable(address)) {
    await writeAddressFile(bundle, address);
    return { address, reused: true };
  }
  const runtimeOptions = await decodeRuntimeOptions(stdin);

  const daemonFlags = formatShimFlags({ ...flags, socket: address }, "serve");
  const daemon = options.daemon ?? { command: process.execPath, args: [...daemonExecArgv(), process.argv[1] ?? ""] };
  const env: NodeJS.ProcessEnv = { ...process.env, ...options.env };
  if (runtimeOptions !== undefined && runtimeOptions.configPath !== "") env.HAKO_CONFIG = runtimeOptions.configPath;

  const logFd = openLogFd(bundle);
  let child;
  try {
    child = spawn(daemon.command, [...daemon.args, ...daemonFlags], {
      cwd: bundle,
      env,
      detached: true,
      stdio: ["ignore", logFd ?? "ignore", logFd ?? "ignore"],
    });
  } finally {
    if (logFd !== undefined) closeSync(logFd);
  }
  let exited: string | undefined;
  child.once("error", (err) => {
    exited = `cannot run ${daemon.command}: ${err.message}`;
  });
  child.once("exit", (code, signal) => {
    exited = `daemon exited (${signal ?? `code ${code}`})`;
  });
  child.unref();
  const pid = child.pid;

  const fail = (message: string): never => {
    if (pid !== undefined) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
    throw new RuntimeError(Code.UNAVAILABLE, flags.id, message);
  };

  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  const pollMs = options.pollMs ?? 20;
  for (;;) {
    if (await isSocketConnectable(address, 500)) break;
    // A daemon that lost the race against another start exits; the winner serves.
    if (exited !== undefined) {
      if (await isSocketConnectable(address, 500)) break;
      fail(`shim daemon for ${flags.id} failed to start: ${exited}`);
    }
    if (Date.now() >= deadline) {
      fail(`shim daemon for ${flags.id} did not listen on ${address} within ${options.timeoutMs ?? 10_000} ms`);
    }
    await sleep(pollMs);
  }
  try {
    await writeAddressFile(bundle, address);
  } catch (err) {
    fail((err as Error).message);
  }
  return pid === undefined ? { address, reused: false } : { address, reused: false, daemonPid: pid };
}

/** Runs the `start` command: prints the address (exit 0) or one error line (exit 1). */
export async function runStart(flags: ShimFlags, options: StartOptions = {}): Promise<number> {
  try {
    const { address } = await startShim(flags, options);
    writeAll(1, Buffer.from(address));
    return 0;
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`containerd-shim-hako-v2 start: ${message.split("\n")[0]}\n`);
    return 1;
  }
}
