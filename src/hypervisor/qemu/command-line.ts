// The QEMU command line for one sandbox VM, built as a pure function of the
// VM spec and the [hypervisor.qemu] configuration so that it can be tested
// argument by argument.
import { kernelWantsAcpi } from "../guest-kernel.js";
import { readFileSync } from "node:fs";
import type { GuestLockdown, QemuConfig } from "../../runtime/config.js";
import { ConfigError } from "../../runtime/errors.js";
import type { Accelerator, VmNic, VmSpec } from "../hypervisor.js";

/** How virtio devices are attached: virtio-mmio (`virtio-*-device`) or PCI (`virtio-*-pci`). */
export type Transport = "mmio" | "pci";

/**
 * The virtio transport used on `-machine microvm`. "pci" turns on microvm's
 * PCIe host bridge (`-machine microvm,pcie=on`) and uses the `-pci` devices.
 */
export const MICROVM_TRANSPORT: Transport = "mmio";

export type MachineType = "microvm" | "q35";

export interface QemuPaths {
  qmpSocket: string;
  agentSocket: string;
  pidFile: string;
}

export interface BuildOptions {
  /** Host TSC frequency in kHz for `tsc_early_khz=` (default: read from /proc/cpuinfo once). */
  hostTscKhz?: number;
  /** Overrides the transport derived from the machine type. */
  transport?: Transport;
}

/** hako's own kernel command line words, before `quiet` and the configured/extra params. */
export const BASE_KERNEL_PARAMS: readonly string[] = [
  "console=ttyS0",
  // microvm has no keyboard controller: a triple-fault reset ends QEMU (-no-reboot) at once.
  "reboot=t",
  "panic=-1",
  "rdinit=/init",
  "tsc=reliable",
  "no_timer_check",
  "noreplace-smp",
  "cryptomgr.notests",
];

export function machineTypeOf(qemu: Pick<QemuConfig, "machine_type">): MachineType {
  const m = qemu.machine_type === "" ? "microvm" : qemu.machine_type;
  if (m !== "microvm" && m !== "q35") {
    throw new ConfigError(`hypervisor.qemu.machine_type = ${JSON.stringify(qemu.machine_type)} is not supported`, {
      hint: "use \"microvm\" or \"q35\"",
    });
  }
  return m;
}

/** The virtio transport for a machine type: microvm → MICROVM_TRANSPORT, q35 → pci. */
export function transportFor(machine: MachineType, override?: Transport): Transport {
  if (machine === "q35") {
    if (override === "mmio") throw new ConfigError("virtio-mmio devices are not available on -machine q35", { hint: "use the pci transport on q35" });
    return "pci";
  }
  return override ?? MICROVM_TRANSPORT;
}

let cachedTscKhz: number | undefined;

/** Host TSC frequency estimate in kHz: the first "cpu MHz" of /proc/cpuinfo × 1000, read once. */
export function hostTscKhz(cpuinfo?: string): number {
  if (cpuinfo === undefined && cachedTscKhz !== undefined) return cachedTscKhz;
  const text = cpuinfo ?? readFileSync("/proc/cpuinfo", "utf8");
  const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(text);
  const mhz = m ? Number(m[1]) : NaN;
  if (!Number.isFinite(mhz) || mhz <= 0) {
    throw new ConfigError("cannot read the host CPU frequency (\"cpu MHz\") from /proc/cpuinfo", {
      hint: "microvm under TCG needs tsc_early_khz=; use machine_type = \"q35\" on this host",
    });
  }
  const khz = Math.round(mhz * 1000);
  if (cpuinfo === undefined) cachedTscKhz = khz;
  return khz;
}

/** Doubles commas so that a value survives QEMU's `key=value,...` option parsing. */
export function qemuEscape(value: string): string {
  return value.replace(/,/g, ",,");
}

export interface CmdlineInput {
  accel: Accelerator;
  machine: MachineType;
  verboseConsole?: boolean;
  /** Root filesystem on /dev/vda (erofs) instead of the initrd. */
  erofsRoot?: boolean;
  /** node's image is the first virtio-blk disk: the guest mounts it (`hako.node_image=/dev/vda`). */
  nodeImage?: boolean;
  /** Configured hypervisor.qemu.kernel_params (whitespace separated). */
  configParams?: string;
  extraParams?: readonly string[];
  hostTscKhz?: number;
  /** Under TCG: boot with `norandmaps` (hypervisor.qemu.tcg_norandmaps). */
  tcgNorandmaps?: boolean;
  /** Under TCG: boot with `mitigations=off` (hypervisor.qemu.tcg_mitigations_off). */
  tcgMitigationsOff?: boolean;
  /** hypervisor.qemu.guest_lockdown: `lockdown=<level>` unless "none". */
  lockdown?: GuestLockdown;
}

/** The guest kernel options of a configuration, as kernelCommandLine takes them (real VMs and the accelerator probe alike). */
export function configGuestOptions(
  qemu: Pick<QemuConfig, "tcg_norandmaps" | "tcg_mitigations_off" | "guest_lockdown">,
): Pick<CmdlineInput, "tcgNorandmaps" | "tcgMitigationsOff" | "lockdown"> {
  return { tcgNorandmaps: qemu.tcg_norandmaps, tcgMitigationsOff: qemu.tcg_mitigations_off, lockdown: qemu.guest_lockdown };
}

/** The guest kernel command line as a word list. */
export function kernelCommandLine(input: CmdlineInput): string[] {
  const words = [...BASE_KERNEL_PARAMS];
  if (!input.verboseConsole) words.push("quiet");
  if (input.machine === "microvm" && input.accel === "tcg") words.push(`tsc_early_khz=${input.hostTscKhz ?? hostTscKhz()}`);
  if (input.erofsRoot) words.push("root=/dev/vda", "rootfstype=erofs", "ro", "init=/init");
  else if (input.nodeImage) words.push("hako.node_image=/dev/vda");
  // TCG finds a translated block by its virtual address too: with ASLR every
  // new process (crun, ip, mount, the container's) maps its code elsewhere and
  // is translated again. Fixed addresses let a VM reuse its translations
  // (a warm crun start 160-400 → 80-120 ms; docs/configuration.md).
  if (input.accel === "tcg" && input.tcgNorandmaps) words.push("norandmaps");
  // The guest kernel's Spectre/Meltdown mitigations (retpolines, swapgs
  // barriers, RSB filling) guard against a CPU speculating through the
  // guest's own code. Under TCG no CPU runs that code: QEMU translates it,
  // and a retpoline becomes two more translated indirect jumps. They cost
  // every guest syscall and interrupt (crun run ~10 % slower) and protect
  // nothing; the host's own mitigations still guard QEMU. Under KVM they do
  // protect the guest kernel from the pod's processes, so they stay.
  if (input.accel === "tcg" && input.tcgMitigationsOff) words.push("mitigations=off");
  // Kernel lockdown keeps a pod's processes from reading or changing the guest
  // kernel (kprobes, /dev/mem, BPF reading kernel memory, unsigned modules).
  // At "confidentiality" it also keeps tracefs from being set up: the Debian
  // 6.1 kernel creates the files of every trace event at boot (no eventfs
  // before 6.6), ~10,000 pinned inodes and dentries, ~9 MiB of slab in every
  // VM that nothing in a pod reads (docs/benchmarks.md, twelfth stop).
  if (input.lockdown !== undefined && input.lockdown !== "none") words.push(`lockdown=${input.lockdown}`);
  if (input.configParams) words.push(...input.configParams.split(/\s+/).filter((w) => w !== ""));
  if (input.extraParams) words.push(...input.extraParams);
  return words;
}

/** `-machine`, `-accel` and `-cpu` arguments. */
export function machineArgs(
  machine: MachineType,
  transport: Transport,
  accel: Accelerator,
  qemu: Pick<QemuConfig, "tb_size" | "cpu_model">,
  acpi = true,
): string[] {
  // microvm without ACPI lists the virtio-mmio devices on the kernel command line
  // (the minimal kernel has no ACPI); with ACPI they are in the DSDT (Debian's kernel).
  // No PIT for the Debian kernel (ACPI): its channel 0 keeps a 27.5 ms QEMU
  // timer running that no guest uses, a wake-up of every idle VM's main loop
  // (an idle clone's QEMU 0.9 % → 0.3 % of a core with the agent's change
  // below, docs/templating.md). The minimal kernel (no ACPI) does not boot
  // without it.
  const microvm = ["microvm", ...(acpi ? ["pit=off"] : ["acpi=off"]), ...(transport === "pci" ? ["pcie=on"] : [])].join(",");
  const args = ["-machine", machine === "microvm" ? microvm : machine];
  if (accel === "kvm") {
    args.push("-accel", "kvm", "-cpu", "host");
  } else {
    args.push("-accel", `tcg,tb-size=${qemu.tb_size}`, "-cpu", qemu.cpu_model === "" ? "qemu64" : qemu.cpu_model);
  }
  return args;
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
/** Linux interface names: at most 15 bytes, no '/', ':', ',' or whitespace (commas would break QEMU's option syntax). */
const IFNAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;

/** `-netdev tap` + its virtio-net device for one NIC (`device` is virtio-net-device or virtio-net-pci). */
export function nicArgs(nic: VmNic, index: number, device: string): string[] {
  const mac = nic.mac.toLowerCase();
  if (!MAC_RE.test(mac)) throw new ConfigError(`NIC ${index} has an invalid MAC address ${JSON.stringify(nic.mac)}`, { hint: "use six colon-separated hex bytes" });
  if ((Number.parseInt(mac.slice(0, 2), 16) & 1) === 1) throw new ConfigError(`NIC ${index} has a multicast MAC address ${mac}`, { hint: "a NIC needs a unicast MAC (lowest bit of the first byte clear)" });
  if (!IFNAME_RE.test(nic.tapName)) throw new ConfigError(`NIC ${index} has an invalid tap name ${JSON.stringify(nic.tapName)}`, { hint: "1-15 characters of [A-Za-z0-9_.-]" });
  // script=no/downscript=no: the tap exists already (created in the netns with its tc filters); QEMU only opens it.
  return ["-netdev", `tap,id=net${index},ifname=${nic.tapName},script=no,downscript=no`, "-device", `${device},netdev=net${index},mac=${mac}`];
}

/** The full argv (without the QEMU binary) for one sandbox VM. */
export function buildQemuArgs(spec: VmSpec, qemu: QemuConfig, paths: QemuPaths, opts: BuildOptions = {}): string[] {
  const machine = machineTypeOf(qemu);
  const transport = transportFor(machine, opts.transport);
  const dev = (kind: string): string => `virtio-${kind}-${transport === "pci" ? "pci" : "device"}`;
  const e = qemuEscape;

  const args: string[] = ["-name", `hako-${e(spec.id)}`];
  const tcg = spec.tcgCacheMiB !== undefined ? { ...qemu, tb_size: spec.tcgCacheMiB } : qemu;
  args.push(...machineArgs(machine, transport, spec.accel, tcg, spec.acpi ?? kernelWantsAcpi(spec.kernel)));
  args.push("-m", `${spec.memoryMiB}M`, "-smp", String(spec.vcpus));
  if (spec.memoryFile) {
    const m = args.indexOf("-machine");
    args[m + 1] = `${args[m + 1]},memory-backend=mem`;
    args.push("-object", `memory-backend-file,id=mem,size=${spec.memoryMiB}M,mem-path=${e(spec.memoryFile.path)},share=${spec.memoryFile.shared ? "on" : "off"}`);
  }
  if (spec.restoreState) {
    if (!spec.memoryFile || spec.memoryFile.shared) throw new ConfigError(`sandbox ${spec.id}: restoring a template needs a private memory file`);
    args.push("-incoming", "defer");
  }
  args.push("-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-display", "none");

  args.push("-kernel", spec.kernel);
  if (spec.initrd) args.push("-initrd", spec.initrd);
  const cmdline = kernelCommandLine({
    accel: spec.accel,
    machine,
    verboseConsole: spec.verboseConsole,
    erofsRoot: Boolean(spec.image),
    nodeImage: Boolean(spec.nodeImage),
    configParams: qemu.kernel_params,
    extraParams: spec.kernelParams,
    hostTscKhz: opts.hostTscKhz,
    ...configGuestOptions(qemu),
  });
  args.push("-append", cmdline.join(" "));

  // Serial console → file.
  args.push("-chardev", `file,id=console,path=${e(spec.consoleLog)}`, "-serial", "chardev:console");
  // QMP.
  args.push("-qmp", `unix:${e(paths.qmpSocket)},server=on,wait=off`);

  // Read-only root filesystem image first, so that it is /dev/vda; or node's
  // image (with the initrd), the only disk then.
  if (spec.image) {
    args.push("-drive", `file=${e(spec.image)},if=none,id=rootfs,format=raw,readonly=on`);
    args.push("-device", `${dev("blk")},drive=rootfs`);
  } else if (spec.nodeImage) {
    args.push("-drive", `file=${e(spec.nodeImage)},if=none,id=nodeimg,format=raw,readonly=on`);
    args.push("-device", `${dev("blk")},drive=nodeimg`);
  }

  // Agent channel.
  args.push("-device", `${dev("serial")},id=vser0`);
  args.push("-chardev", `socket,id=agent,path=${e(paths.agentSocket)},server=on,wait=off`);
  args.push("-device", "virtserialport,bus=vser0.0,chardev=agent,name=agent.channel.0");

  // Shared directories (virtio-9p).
  spec.sharedDirs.forEach((d, i) => {
    args.push("-fsdev", `local,id=fs${i},path=${e(d.hostPath)},security_model=none${d.readonly ? ",readonly=on" : ""}`);
    args.push("-device", `${dev("9p")},fsdev=fs${i},mount_tag=${e(d.tag)}`);
  });

  // Network: one tap netdev + virtio-net per NIC. The taps live in the netns QEMU is started in.
  (spec.network?.nics ?? []).forEach((nic, i) => args.push(...nicArgs(nic, i, dev("net"))));

  // Entropy.
  args.push("-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", `${dev("rng")},rng=rng0`);
  // Free page reporting: the guest hands back the pages it frees (the initrd
  // it unpacked, boot-time buffers) and QEMU discards them, so an idle VM's
  // host footprint follows what the guest uses, not what it ever touched.
  // Not with file-backed RAM (templates and their clones): a template's saved state
  // with a reporting balloon did not resume, and a clone's RAM is mostly shared anyway.
  if (qemu.free_page_reporting && !spec.memoryFile) args.push("-device", `${dev("balloon")},free-page-reporting=on`);

  args.push("-pidfile", paths.pidFile);
  return args;
}
