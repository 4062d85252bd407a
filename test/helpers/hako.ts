// Runs the built `hako` CLI as a user would, with a private state directory.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync, readFileSync, existsSync } from "node:fs";
import { join, resolve } from "node:path";

export const REPO = resolve(import.meta.dirname, "..", "..");
export const HAKO = join(REPO, "build", "bin", "hako");
/** Private state dir of the test run: never collides with a real /run/hako. */
export const TEST_STATE_DIR = process.env.HAKO_TEST_STATE_DIR ?? "/run/hako-test";
export const TEST_CONFIG = join(TEST_STATE_DIR, "configuration.toml");

/** HAKO_TEST_TEMPLATE=1: sandboxes are cloned from VM templates (the CRI suite runs in both modes). */
export const TEMPLATE_MODE = process.env.HAKO_TEST_TEMPLATE === "1";

export function ensureTestConfig(extra = ""): string {
  mkdirSync(TEST_STATE_DIR, { recursive: true });
  const base = readFileSync(join(REPO, "build", "share", "hako", "configuration.toml"), "utf8");
  let text = base.replace(/state_dir = ".*"/, `state_dir = "${TEST_STATE_DIR}"`) + extra;
  if (TEMPLATE_MODE)
    text = text.replace(/enable_template = .*/, "enable_template = true").replace(/template_path = ".*"/, `template_path = "${join(TEST_STATE_DIR, "template")}"`);
  if (!existsSync(TEST_CONFIG) || readFileSync(TEST_CONFIG, "utf8") !== text) writeFileSync(TEST_CONFIG, text);
  return TEST_CONFIG;
}

export function hakoEnv(): NodeJS.ProcessEnv {
  return { ...process.env, HAKO_CONFIG: ensureTestConfig() };
}

export interface HakoResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs hako to completion. */
export function hako(args: string[], opts: { input?: Buffer | string; timeoutMs?: number } = {}): Promise<HakoResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(HAKO, args, { env: hakoEnv(), stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    let err = "";
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`hako ${args.join(" ")} timed out; stderr: ${err}`));
    }, opts.timeoutMs ?? 120_000);
    child.on("error", reject);
    child.on("close", (status, signal) => {
      clearTimeout(timer);
      resolvePromise({ status, signal, stdout: Buffer.concat(out), stderr: err });
    });
    child.stdin.on("error", () => undefined);
    if (opts.input !== undefined) child.stdin.end(opts.input);
    else child.stdin.end();
  });
}

export function hakoSpawn(args: string[]): ChildProcess {
  return spawn(HAKO, args, { env: hakoEnv(), stdio: ["pipe", "pipe", "pipe"] });
}

export function hakoSync(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(HAKO, args, { env: hakoEnv(), encoding: "utf8" });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
