// Shared CLI plumbing: config, logger, error printing.
import { existsSync } from "node:fs";
import { loadConfig, type HakoConfig } from "../runtime/config.js";
import { guestBoot } from "../runtime/factory.js";
import { HakoError, ImageError } from "../runtime/errors.js";
import { createLogger, type Logger } from "../runtime/logger.js";

export interface GlobalOptions {
  config?: string;
  debug?: boolean;
}

export function setup(opts: GlobalOptions): { cfg: HakoConfig; log: Logger } {
  const cfg = loadConfig(opts.config);
  const log = createLogger("hako", { level: opts.debug ? "debug" : process.env.HAKO_LOG_LEVEL ?? cfg.runtime.log_level });
  return { cfg, log };
}

export function requireGuestAssets(cfg: HakoConfig): void {
  const q = cfg.hypervisor.qemu;
  if (!existsSync(q.path)) throw new ImageError(`QEMU binary ${q.path} not found`, { hint: "install qemu-system-x86 or set hypervisor.qemu.path" });
  const boot = guestBoot(q);
  if (!existsSync(boot.kernel)) throw new ImageError(`guest kernel ${boot.kernel} not found`, { hint: "run `hako image build`" });
  if (boot.initrd && !existsSync(boot.initrd)) throw new ImageError(`guest initrd ${boot.initrd} not found`, { hint: "run `hako image build`" });
  if (boot.nodeImage && !existsSync(boot.nodeImage))
    throw new ImageError(`guest node image ${boot.nodeImage} not found`, { hint: "run `hako image build` (or set hypervisor.qemu.node_image = \"\" for an image built with node in its initrd)" });
  if (boot.image && !existsSync(boot.image)) throw new ImageError(`guest image ${boot.image} not found`, { hint: "run `hako image build --format erofs`" });
}

/** Exit status for hako's own failures (as docker/podman use): distinct from a container's status. */
export const EXIT_RUNTIME_ERROR = 125;

export function printError(err: unknown): void {
  const msg = err instanceof HakoError || err instanceof Error ? err.message : String(err);
  process.stderr.write(`hako: ${msg.split("\n")[0]}\n`);
  if (process.env.HAKO_DEBUG_STACK && err instanceof Error) process.stderr.write(`${err.stack}\n`);
}
