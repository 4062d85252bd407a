// Runs the built `hako` CLI as a user would, with a private state directory.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { runToEnd, type RunResult } from "./processes.js";
import { loadConfig, type HakoConfig } from "../../src/runtime/config.js";
import { listTemplates } from "../../src/runtime/factory.js";
import { cachedVmCounts } from "../../src/runtime/vm-cache.js";

export const REPO = resolve(import.meta.dirname, "..", "..");
export const HAKO = join(REPO, "build", "bin", "hako");
/** Private state dir of the test run: never collides with a real /run/hako. */
export const TEST_STATE_DIR = process.env.HAKO_TEST_STATE_DIR ?? "/run/hako-test";
export const TEST_CONFIG = join(TEST_STATE_DIR, "configuration.toml");

/**
 * HAKO_TEST_TEMPLATE=1: sandboxes are cloned from VM templates; =cache: and
 * taken warm from the VM cache (`hako factory cache`, 2 per template). The CRI
 * suite runs in all three modes.
 */
export const VM_CACHE_MODE = process.env.HAKO_TEST_TEMPLATE === "cache";
export const TEMPLATE_MODE = process.env.HAKO_TEST_TEMPLATE === "1" || VM_CACHE_MODE;
/** VMs the VM cache keeps per template in VM_CACHE_MODE. */
export const TEST_VM_CACHE_NUMBER = 2;

export function ensureTestConfig(extra = ""): string {
  mkdirSync(TEST_STATE_DIR, { recursive: true });
  const base = readFileSync(join(REPO, "build", "share", "hako", "configuration.toml"), "utf8");
  let text = base.replace(/state_dir = ".*"/, `state_dir = "${TEST_STATE_DIR}"`) + extra;
  if (TEMPLATE_MODE)
    text = text.replace(/enable_template = .*/, "enable_template = true").replace(/template_path = ".*"/, `template_path = "${join(TEST_STATE_DIR, "template")}"`);
  if (VM_CACHE_MODE) text = text.replace(/vm_cache_number = .*/, `vm_cache_number = ${TEST_VM_CACHE_NUMBER}`);
  if (!existsSync(TEST_CONFIG) || readFileSync(TEST_CONFIG, "utf8") !== text) writeFileSync(TEST_CONFIG, text);
  return TEST_CONFIG;
}

export function hakoEnv(): NodeJS.ProcessEnv {
  return { ...process.env, HAKO_CONFIG: ensureTestConfig() };
}

export type HakoResult = RunResult;

/** Runs hako to completion. */
export function hako(args: string[], opts: { input?: Buffer | string; timeoutMs?: number } = {}): Promise<HakoResult> {
  return runToEnd(HAKO, args, { ...opts, env: hakoEnv(), timeoutMs: opts.timeoutMs ?? 120_000 });
}

export function hakoSpawn(args: string[]): ChildProcess {
  return spawn(HAKO, args, { env: hakoEnv(), stdio: ["pipe", "pipe", "pipe"] });
}

export function hakoSync(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(HAKO, args, { env: hakoEnv(), encoding: "utf8" });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `hako factory cache` run by a test: wait for it to fill, stop it. */
export interface VmCacheDaemon {
  readonly pid: number;
  /** Resolves when every valid template has vm_cache_number ready VMs; rejects after timeoutMs. */
  waitFull(timeoutMs: number): Promise<void>;
  /** SIGTERM, then its exit and output. */
  stop(): Promise<{ status: number | null; stdout: string; stderr: string }>;
}

/** Ready cached VMs per valid template of a configuration, as `hako factory status` counts them. */
export function cachedVmsReady(cfg: HakoConfig): number[] {
  const counts = cachedVmCounts(cfg);
  return listTemplates(cfg)
    .filter((t) => t.valid)
    .map((t) => counts[t.key] ?? 0);
}

export interface VmCacheOptions {
  /** Its configuration (default: the test config); it waits for that config's vm_cache_number per template. */
  config?: string;
  fillTimeoutMs?: number;
  /** Called with the daemon's pid once spawned (the benchmark tracks its children). */
  onSpawn?: (pid: number | undefined) => void;
}

/** Starts `hako factory cache` and waits until it is full. */
export async function startVmCache(o: VmCacheOptions = {}): Promise<VmCacheDaemon> {
  const configPath = o.config ?? ensureTestConfig();
  const cfg = loadConfig(configPath);
  const perTemplate = cfg.factory.vm_cache_number;
  let out = "";
  let err = "";
  const env = { ...process.env, HAKO_CONFIG: configPath };
  const child = spawn(HAKO, ["factory", "cache"], { env, stdio: ["ignore", "pipe", "pipe"] });
  o.onSpawn?.(child.pid);
  child.stdout!.on("data", (b: Buffer) => (out += b.toString()));
  child.stderr!.on("data", (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const d: VmCacheDaemon = {
    pid: child.pid ?? 0,
    async waitFull(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const counts = cachedVmsReady(cfg);
        if (counts.length > 0 && counts.every((n) => n >= perTemplate)) return;
        if (child.exitCode !== null) throw new Error(`hako factory cache exited (${child.exitCode}): ${err}`);
        if (Date.now() > deadline) throw new Error(`the VM cache did not fill within ${timeoutMs} ms (ready: ${counts.join(", ")}): ${out}${err}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
      const code = await exited;
      clearTimeout(timer);
      return { status: code, stdout: out, stderr: err };
    },
  };
  try {
    await d.waitFull(o.fillTimeoutMs ?? 120_000);
  } catch (e) {
    await d.stop();
    throw e;
  }
  return d;
}
