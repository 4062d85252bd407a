// The hypervisor seam and its QEMU implementation.
import type { QemuConfig } from "../runtime/config.js";
import type { Logger } from "../runtime/logger.js";
import type { Hypervisor } from "./hypervisor.js";
import { QemuHypervisor, type QemuHypervisorOptions } from "./qemu/qemu-hypervisor.js";

export type { Accelerator, Hypervisor, SharedDir, VirtualMachine, VmExit, VmNetwork, VmNic, VmSpec } from "./hypervisor.js";
export {
  BASE_KERNEL_PARAMS,
  MICROVM_TRANSPORT,
  buildQemuArgs,
  hostTscKhz,
  kernelCommandLine,
  machineTypeOf,
  nicArgs,
  transportFor,
  type BuildOptions,
  type MachineType,
  type QemuPaths,
  type Transport,
} from "./qemu/command-line.js";
export { QmpClient, type QmpConnectOptions, type QmpEvent, type QmpGreeting } from "./qemu/qmp-client.js";
export { NSENTER, QemuHypervisor, QemuVirtualMachine, launchCommand, vmPaths, type QemuHypervisorOptions } from "./qemu/qemu-hypervisor.js";
export {
  KVM_DEVICE,
  PROBE_MARKER,
  PROBE_PARAM,
  buildProbeArgs,
  probeAccelerator,
  probeBoot,
  type AccelProbeResult,
  type ProbeAcceleratorOptions,
  type ProbeBootOptions,
  type ProbeBootResult,
} from "./accel-probe.js";

/** The hypervisor for a configuration (QEMU is the only variant). */
export function createHypervisor(cfg: { hypervisor: { qemu: QemuConfig } }, logger?: Logger, opts: QemuHypervisorOptions = {}): Hypervisor {
  return new QemuHypervisor(cfg.hypervisor.qemu, logger, opts);
}
