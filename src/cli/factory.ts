// `hako factory init|status|destroy`: the VM templates sandboxes are cloned
// from when [factory] enable_template = true (docs/templating.md).
import { createHypervisor } from "../hypervisor/index.js";
import { chooseAccel } from "../runtime/accel.js";
import { ConfigError } from "../runtime/errors.js";
import { createTemplate, describeShape, destroyTemplates, initTemplateShapes, listTemplates, pruneStaleTemplates } from "../runtime/factory.js";
import { VmCacheDaemon, cachedVmCounts } from "../runtime/vm-cache.js";
import { requireGuestAssets, setup, type GlobalOptions } from "./common.js";

/** Builds the templates for the configured default size: without a NIC (`hako run`) and with one (pods). */
export async function factoryInit(opts: GlobalOptions): Promise<void> {
  const { cfg, log } = setup(opts);
  if (!cfg.factory.enable_template)
    throw new ConfigError("templating is off in this configuration", { hint: "set [factory] enable_template = true (the shim and hako run only clone when it is on)" });
  requireGuestAssets(cfg);
  const stale = pruneStaleTemplates(cfg);
  if (stale.length > 0) process.stdout.write(`removed ${stale.length} stale template(s): ${stale.join(", ")}\n`);
  const accel = (await chooseAccel(cfg, log)).accel;
  for (const shape of initTemplateShapes(cfg, accel)) {
    const t0 = Date.now();
    const m = await createTemplate(cfg, createHypervisor(cfg, log), shape, log);
    process.stdout.write(`template ${m.key}: ${describeShape(shape)}, built in ${Date.now() - t0} ms\n`);
  }
}

export function factoryStatus(opts: GlobalOptions & { json?: boolean }): void {
  const { cfg } = setup(opts);
  const list = listTemplates(cfg);
  if (opts.json) return void process.stdout.write(`${JSON.stringify({ enabled: cfg.factory.enable_template, path: cfg.factory.template_path, templates: list, cachedVms: cachedVmCounts(cfg) }, null, 2)}\n`);
  process.stdout.write(`templating ${cfg.factory.enable_template ? "on" : "off"}, templates in ${cfg.factory.template_path}\n`);
  const cached = cachedVmCounts(cfg);
  for (const t of list)
    process.stdout.write(
      `${t.key}  ${t.valid ? "valid" : "STALE (rebuild: hako factory init)"}  ${t.shape.vcpus} vCPU ${t.shape.memoryMiB} MiB ${t.shape.nics} NIC ${t.shape.accel}  created ${t.created}  cached VMs ready: ${cached[t.key] ?? 0}\n`,
    );
  if (list.length === 0) process.stdout.write("no template (hako factory init)\n");
}

export function factoryDestroy(opts: GlobalOptions): void {
  const { cfg } = setup(opts);
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
