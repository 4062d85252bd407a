// One template build at a time per template_path, and the background rebuild
// a sandbox asks for when templating is on but it finds no usable template
// (none built yet, or stale after an update of hako, the guest assets or the
// configuration): the sandbox boots cold, and a detached
// `hako factory init --missing` builds what is missing, so that the next
// sandboxes are clones again (docs/templating.md, "Rebuilding").
import { spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { configSourceOf } from "./factory.js";
import type { HakoConfig } from "./config.js";
import type { Logger } from "./logger.js";
import { libDir } from "./paths.js";
import { pidFileHolder, tryPidFileLock, type PidFileLock } from "./state.js";

const LOCK = ".build.lock";
/** The background build's output, appended: `hako factory status` points at it. */
export const BUILD_LOG = ".build.log";
/** Written when a build fails, removed when one succeeds: sandboxes do not start another for a while. */
const FAILED = ".build.failed";
/** How long after a failed build sandboxes start no other (each would fail the same way, on every pod start). */
export const RETRY_AFTER_FAILURE_MS = 10 * 60_000;

const lockPath = (cfg: HakoConfig): string => join(cfg.factory.template_path, LOCK);
export const buildLogPath = (cfg: HakoConfig): string => join(cfg.factory.template_path, BUILD_LOG);

/** The pid of the `hako factory init` building templates under template_path now, if one runs. */
export const runningTemplateBuild = (cfg: HakoConfig): number | undefined => pidFileHolder(lockPath(cfg), "factory");

/**
 * Takes the build lock for this process (a `hako factory init`), or says
 * which live build holds it. A lock left by a build that died is taken over;
 * two takers of it would only build twice (each build writes its own
 * directory, createTemplate).
 */
export function tryLockTemplateBuild(cfg: HakoConfig): PidFileLock {
  mkdirSync(cfg.factory.template_path, { recursive: true, mode: 0o700 });
  return tryPidFileLock(lockPath(cfg), "factory");
}

/** Records that a build failed (`hako factory init` calls it), or with undefined that one succeeded. */
export function recordTemplateBuildFailure(cfg: HakoConfig, message: string | undefined): void {
  const path = join(cfg.factory.template_path, FAILED);
  if (message === undefined) return void rmSync(path, { force: true });
  mkdirSync(cfg.factory.template_path, { recursive: true, mode: 0o700 });
  writeFileSync(path, `${new Date().toISOString()} ${message}\n`);
}

/** The last failure's line, if a build failed less than RETRY_AFTER_FAILURE_MS ago. */
export function recentTemplateBuildFailure(cfg: HakoConfig, now = Date.now()): string | undefined {
  const path = join(cfg.factory.template_path, FAILED);
  try {
    if (now - statSync(path).mtimeMs >= RETRY_AFTER_FAILURE_MS) return undefined;
    return readFileSync(path, "utf8").trim();
  } catch {
    return undefined;
  }
}

/** What requestTemplateBuild did: started a build, found one running, or could not start one. */
export type TemplateBuildRequest = { started: boolean; pid: number; log: string } | { started: false; pid?: undefined; error: string };

/**
 * Starts `hako factory init --missing` detached (its own session, output
 * appended to `<template_path>/.build.log`), unless a build runs already or
 * one failed less than RETRY_AFTER_FAILURE_MS ago.
 * It uses this configuration's file, and the `hako` bundled beside the
 * running program. The caller does not wait: the child outlives a short-lived
 * `hako run` or a pod's shim.
 */
export function requestTemplateBuild(cfg: HakoConfig, log: Logger): TemplateBuildRequest {
  const running = runningTemplateBuild(cfg);
  if (running !== undefined) return { started: false, pid: running, log: buildLogPath(cfg) };
  const failed = recentTemplateBuildFailure(cfg);
  if (failed !== undefined)
    return { started: false, error: `the last build failed (${failed}); the next one starts ${RETRY_AFTER_FAILURE_MS / 60_000} min after it, or run \`hako factory init\`` };
  const cli = join(libDir(), "hako.mjs");
  if (!existsSync(cli)) return { started: false, error: `${cli} not found (hako is not built or installed there)` };
  try {
    mkdirSync(cfg.factory.template_path, { recursive: true, mode: 0o700 });
    // Absolute: the child runs in /.
    const args = [cli, ...(cfg.source !== "" ? ["--config", configSourceOf(cfg)] : []), "factory", "init", "--missing"];
    const out = openSync(buildLogPath(cfg), "a");
    let child;
    try {
      child = spawn(process.execPath, args, { detached: true, stdio: ["ignore", out, out], cwd: "/" });
    } finally {
      closeSync(out);
    }
    // Reaped by this process if it lives longer; not waited for.
    child.on("error", (err) => log.warn({ err: err.message }, "the background template build could not start"));
    child.unref();
    if (child.pid === undefined) return { started: false, error: "spawn gave no pid" };
    return { started: true, pid: child.pid, log: buildLogPath(cfg) };
  } catch (err) {
    return { started: false, error: (err as Error).message };
  }
}
