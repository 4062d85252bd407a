// Chooses the accelerator for new VMs from the (cached) probe.
import { join } from "node:path";
import { probeAccelerator, type AccelProbeResult } from "../hypervisor/accel-probe.js";
import type { HakoConfig } from "./config.js";
import type { Logger } from "./logger.js";

export function accelCacheFile(cfg: HakoConfig): string {
  return join(cfg.runtime.state_dir, "accel-probe.json");
}

export async function chooseAccel(cfg: HakoConfig, logger?: Logger): Promise<AccelProbeResult> {
  const q = cfg.hypervisor.qemu;
  return probeAccelerator({
    qemu: q,
    kernel: q.kernel,
    initrd: q.initrd,
    cacheFile: accelCacheFile(cfg),
    timeoutMs: q.accel_probe_timeout * 1000,
    logger,
  });
}
