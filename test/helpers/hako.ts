// Runs the built `hako` CLI as a user would, with a private state directory.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync, readFileSync, existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { runToEnd, type RunResult } from "./processes.js";

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
