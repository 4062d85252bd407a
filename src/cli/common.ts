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

/** A file a VM boots from: what `hako check` calls it, what an error calls it, its path, what it is, what makes it. */
export interface GuestAsset {
  check: string;
  what: string;
  path: string;
  kind: string;
  hint: string;
}

/** The guest files a VM of this configuration boots from (guestBoot), in boot order. */
export function guestAssets(q: HakoConfig["hypervisor"]["qemu"]): GuestAsset[] {
  const boot = guestBoot(q);
  const build = "run `hako image build`";
  const out: GuestAsset[] = [{ check: "guest kernel", what: "guest kernel", path: boot.kernel, kind: "", hint: build }];
  if (boot.image) out.push({ check: "guest rootfs", what: "guest image", path: boot.image, kind: "erofs", hint: "run `hako image build --format erofs`" });
  if (boot.initrd) out.push({ check: "guest rootfs", what: "guest initrd", path: boot.initrd, kind: "initrd", hint: build });
  if (boot.nodeImage) {
    const hint = `${build} (or set hypervisor.qemu.node_image = "" for an image built with node in its initrd)`;
    out.push({ check: "guest node", what: "guest node image", path: boot.nodeImage, kind: "erofs, virtio-blk", hint });
  }
  return out;
}

export function requireGuestAssets(cfg: HakoConfig): void {
  const q = cfg.hypervisor.qemu;
  if (!existsSync(q.path)) throw new ImageError(`QEMU binary ${q.path} not found`, { hint: "install qemu-system-x86 or set hypervisor.qemu.path" });
  const missing = guestAssets(q).find((a) => !existsSync(a.path));
  if (missing) throw new ImageError(`${missing.what} ${missing.path} not found`, { hint: missing.hint });
}

/** Exit status for hako's own failures (as docker/podman use): distinct from a container's status. */
export const EXIT_RUNTIME_ERROR = 125;

export function printError(err: unknown): void {
  const msg = err instanceof HakoError || err instanceof Error ? err.message : String(err);
  process.stderr.write(`hako: ${msg.split("\n")[0]}\n`);
  if (process.env.HAKO_DEBUG_STACK && err instanceof Error) process.stderr.write(`${err.stack}\n`);
}
