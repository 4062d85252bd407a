// How big a pod's VM is. containerd's CRI puts the pod's resource totals on
// the sandbox spec as annotations (the sum of its containers' limits, which
// kubelet ≥ 1.23 passes in PodSandboxConfig). As in Kata's static sizing, the
// VM gets the configured defaults (room for the guest kernel, agent and
// runtime) plus those totals.
import { availableParallelism } from "node:os";
import { BundleError } from "./errors.js";

export const SANDBOX_CPU_QUOTA = "io.kubernetes.cri.sandbox-cpu-quota";
export const SANDBOX_CPU_PERIOD = "io.kubernetes.cri.sandbox-cpu-period";
export const SANDBOX_MEMORY = "io.kubernetes.cri.sandbox-memory";

export interface SandboxSize {
  vcpus: number;
  memoryMiB: number;
}

function annotationNumber(annotations: Record<string, string>, key: string, id: string): number {
  const raw = annotations[key];
  if (raw === undefined || raw === "") return 0;
  const n = Number(raw);
  if (!Number.isFinite(n) || !Number.isInteger(n))
    throw new BundleError(id, `annotation ${key}="${raw}" of sandbox ${id} is not an integer`, { hint: "fix the pod's resources or drop the annotation" });
  return n;
}

/**
 * defaults + ceil(quota / period) vCPUs (at most the host's CPU count) and
 * defaults + the memory annotation in MiB (rounded up). Negative or absent
 * values (no limit) add nothing.
 */
export function sandboxSize(
  id: string,
  annotations: Record<string, string> | undefined,
  defaults: SandboxSize,
  hostCpus = availableParallelism(),
): SandboxSize {
  const a = annotations ?? {};
  const quota = annotationNumber(a, SANDBOX_CPU_QUOTA, id);
  const period = annotationNumber(a, SANDBOX_CPU_PERIOD, id);
  const memory = annotationNumber(a, SANDBOX_MEMORY, id);
  const extraCpus = quota > 0 && period > 0 ? Math.ceil(quota / period) : 0;
  const extraMiB = memory > 0 ? Math.ceil(memory / (1024 * 1024)) : 0;
  return {
    vcpus: Math.max(1, Math.min(defaults.vcpus + extraCpus, Math.max(hostCpus, defaults.vcpus))),
    memoryMiB: defaults.memoryMiB + extraMiB,
  };
}
