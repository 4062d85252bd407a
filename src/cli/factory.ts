// `hako factory init|status|destroy`: the VM templates sandboxes are cloned
// from when [factory] enable_template = true (docs/templating.md).
import { createHypervisor } from "../hypervisor/index.js";
import { chooseAccel } from "../runtime/accel.js";
import { ConfigError, RuntimeError } from "../runtime/errors.js";
import { Code } from "../protocols/ttrpc/status.js";
import type { HakoConfig } from "../runtime/config.js";
import { configSourceOf, createTemplate, describeShape, destroyTemplates, findTemplate, initTemplateShapes, listTemplates, pruneStaleTemplates } from "../runtime/factory.js";
import { buildLogPath, recentTemplateBuildFailure, recordTemplateBuildFailure, runningTemplateBuild, tryLockTemplateBuild } from "../runtime/template-build.js";
import type { PidFileLock } from "../runtime/state.js";
import { VmCacheDaemon, cachedVmCounts } from "../runtime/vm-cache.js";
import { requireGuestAssets, setup, type GlobalOptions } from "./common.js";

/**
 * Builds the templates for the configured default size: without a NIC (`hako
 * run`) and with one (pods). One build at a time per template_path: a manual
 * init waits for a running one, and then builds only what that one did not.
 * `--missing` (the background rebuild a sandbox starts,
 * src/runtime/template-build.ts) builds only what has no valid template,
 * prunes only this configuration's stale templates, and leaves at once if
 * another build runs; its output goes to a log, so its lines carry the time.
 */
export async function factoryInit(opts: GlobalOptions & { missing?: boolean }): Promise<void> {
  const { cfg, log } = setup(opts);
  if (!cfg.factory.enable_template)
    throw new ConfigError("templating is off in this configuration", { hint: "set [factory] enable_template = true (the shim and hako run only clone when it is on)" });
  requireGuestAssets(cfg);
  const say = (line: string): void => void process.stdout.write(`${opts.missing ? `${new Date().toISOString()} ` : ""}${line}\n`);
  const { lock, waited } = await takeBuildLock(cfg, !opts.missing);
  if (!lock.held) return say(`a template build is running already (pid ${lock.holder}): nothing to do`);
  // SIGTERM / SIGINT stop the template VM and remove the build (a background
  // build has no terminal: `kill <pid>` is how it is stopped).
  const interrupted = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => interrupted.abort(new Error(`interrupted by ${sig}`));
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);
  try {
    const stale = pruneStaleTemplates(cfg, Date.now(), opts.missing ? configSourceOf(cfg) : undefined);
    if (stale.length > 0) say(`removed ${stale.length} stale template(s): ${stale.join(", ")}`);
    const accel = (await chooseAccel(cfg, log)).accel;
    for (const shape of initTemplateShapes(cfg, accel)) {
      const existing = opts.missing || waited ? findTemplate(cfg, shape) : undefined;
      if (existing) {
        if (waited) say(`template ${existing.key}: ${describeShape(shape)}, built by the build waited for`);
        continue;
      }
      const t0 = Date.now();
      const m = await createTemplate(cfg, createHypervisor(cfg, log), shape, log, interrupted.signal);
      say(`template ${m.key}: ${describeShape(shape)}, built in ${Date.now() - t0} ms`);
    }
    recordTemplateBuildFailure(cfg, undefined);
  } catch (err) {
    if (interrupted.signal.aborted)
      throw new RuntimeError(Code.CANCELLED, "factory", `template build ${(interrupted.signal.reason as Error).message}: its VM was stopped and the unfinished template removed`);
    recordTemplateBuildFailure(cfg, (err as Error).message);
    throw err;
  } finally {
    process.off("SIGTERM", onSignal);
    process.off("SIGINT", onSignal);
    lock.release();
  }
}

/** The build lock; `wait`: until a running build ends (a manual init), else its holder while one runs. */
async function takeBuildLock(cfg: HakoConfig, wait: boolean): Promise<{ lock: PidFileLock; waited: boolean }> {
  let waited = false;
  for (;;) {
    const lock = tryLockTemplateBuild(cfg);
    if (lock.held || !wait) return { lock, waited };
    if (!waited) process.stdout.write(`waiting for the running template build (pid ${lock.holder}, log ${buildLogPath(cfg)})\n`);
    waited = true;
    await new Promise((r) => setTimeout(r, 500));
  }
}

export function factoryStatus(opts: GlobalOptions & { json?: boolean }): void {
  const { cfg } = setup(opts);
  const list = listTemplates(cfg);
  const building = runningTemplateBuild(cfg);
  const failed = recentTemplateBuildFailure(cfg);
  if (opts.json) {
    const status = { enabled: cfg.factory.enable_template, path: cfg.factory.template_path, templates: list, cachedVms: cachedVmCounts(cfg), building: building ?? null, lastFailure: failed ?? null };
    return void process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
  }
  process.stdout.write(`templating ${cfg.factory.enable_template ? "on" : "off"}, templates in ${cfg.factory.template_path}\n`);
  if (building !== undefined) process.stdout.write(`a template build is running (pid ${building}, log ${buildLogPath(cfg)})\n`);
  if (failed !== undefined) process.stdout.write(`the last template build failed: ${failed} (log ${buildLogPath(cfg)})\n`);
  const cached = cachedVmCounts(cfg);
  for (const t of list)
    process.stdout.write(
      `${t.key}  ${t.valid ? "valid" : "STALE (rebuild: hako factory init)"}  ${t.shape.vcpus} vCPU ${t.shape.memoryMiB} MiB ${t.shape.nics} NIC ${t.shape.accel}  created ${t.created}  cached VMs ready: ${cached[t.key] ?? 0}\n`,
    );
  if (list.length === 0) process.stdout.write("no template (hako factory init)\n");
}

export function factoryDestroy(opts: GlobalOptions): void {
  const { cfg } = setup(opts);
  const building = runningTemplateBuild(cfg);
  if (building !== undefined)
    throw new RuntimeError(Code.UNAVAILABLE, "factory", `a template build is running (pid ${building}): its templates would be removed under it`, { hint: `wait until \`hako factory status\` shows no build running, or stop it (\`kill ${building}\`), then destroy again` });
  process.stdout.write(`removed ${destroyTemplates(cfg)} template(s)\n`);
}

/**
 * `hako factory cache`: keeps [factory] vm_cache_number warm clones of every
 * valid template until SIGINT/SIGTERM, then stops the ones no sandbox took.
 */
export async function factoryCache(opts: GlobalOptions): Promise<void> {
  const { cfg, log } = setup(opts);
  if (!cfg.factory.enable_template || cfg.factory.vm_cache_number === 0)
    throw new ConfigError("the VM cache is off in this configuration", { hint: "set [factory] enable_template = true and vm_cache_number > 0, then run `hako factory init`" });
  if (!listTemplates(cfg).some((t) => t.valid)) throw new ConfigError("there is no valid VM template to cache clones of", { hint: "run `hako factory init` first" });
  const daemon = new VmCacheDaemon(cfg, createHypervisor(cfg, log), log);
  const stop = (): void => void daemon.stop();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  process.stdout.write(`VM cache: keeping ${cfg.factory.vm_cache_number} warm VM(s) per template in ${cfg.runtime.state_dir}/vm-cache (SIGTERM stops it)\n`);
  await daemon.run((key, rec) => process.stdout.write(`cached VM ready: template ${key}, pid ${rec.pid}, ${rec.readyMs} ms\n`));
  await daemon.stopped;
}
