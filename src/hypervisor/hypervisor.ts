// The seam between the runtime and a virtual machine monitor. One file per
// variant implements it (qemu/qemu-hypervisor.ts today).

export type Accelerator = "kvm" | "tcg";

export interface SharedDir {
  /** 9p mount tag seen by the guest. */
  tag: string;
  hostPath: string;
  readonly?: boolean;
}

/** One guest NIC backed by a tap device that already exists in the VM's network namespace. */
export interface VmNic {
  /** Host tap the VMM opens (e.g. tap0_hako). */
  tapName: string;
  /** MAC address of the guest NIC (lower case, colon separated). */
  mac: string;
}

/** Where the VMM runs for networking and which NICs it gives the guest. */
export interface VmNetwork {
  /** Network namespace (a path: /var/run/netns/<name>, /proc/<pid>/ns/net) the VMM process is started in. */
  netnsPath: string;
  nics: VmNic[];
}

export interface VmSpec {
  /** Sandbox id: names the VM in logs and errors. */
  id: string;
  /** Private directory for this VM's sockets, pid file and console log. Must exist. */
  runDir: string;
  accel: Accelerator;
  vcpus: number;
  memoryMiB: number;
  kernel: string;
  /** Initrd holding the guest root filesystem (or a loader for `image`). */
  initrd?: string;
  /** Read-only root filesystem image on virtio-blk (erofs). */
  image?: string;
  /** With `initrd`: node's own read-only image (erofs) on virtio-blk, mounted by the guest's rc.sh. */
  nodeImage?: string;
  /** Extra kernel command line words, appended after hako's own. */
  kernelParams: string[];
  sharedDirs: SharedDir[];
  /** Console (serial) output goes here. */
  consoleLog: string;
  /** Offer ACPI (microvm). Default: from the guest image manifest (off for the minimal kernel). */
  acpi?: boolean;
  /** Print kernel messages on the console (slower under TCG). */
  verboseConsole?: boolean;
  /** Pod networking: start the VMM inside this netns with these NICs. Absent: no NIC at all. */
  network?: VmNetwork;
  /**
   * Guest RAM in a file (VM templating): `shared` for a template (its RAM is
   * the file), private for a clone (a copy-on-write view of the template's).
   */
  memoryFile?: { path: string; shared: boolean };
  /** Restore the device state saved from a template (needs a private memoryFile) instead of booting. */
  restoreState?: string;
  /** TCG translation cache in MiB instead of the configured tb_size (clones: not part of the saved state). */
  tcgCacheMiB?: number;
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface VirtualMachine {
  readonly id: string;
  /** Host pid of the VMM process. */
  readonly pid: number;
  /** Unix socket path connected to the guest agent's virtio-serial port. */
  readonly agentSocketPath: string;
  readonly consoleLog: string;
  /** Resolves when the VMM process has exited (for any reason). */
  readonly exited: Promise<VmExit>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Stops the VM and saves its device state to `file`, leaving RAM in its memory file (templating). */
  saveState(file: string): Promise<void>;
  /**
   * Lets go of a running VM for another process to adopt (the VM cache):
   * closes the monitor connection; `exited` still resolves when it exits.
   */
  release(): void;
  /** Graceful stop (QMP quit), then SIGKILL after graceMs; resolves after exit and cleanup of sockets. */
  stop(graceMs?: number): Promise<VmExit>;
}

/** A running VMM that another process started and hands over (the VM cache). */
export interface AdoptableVm {
  /** Sandbox id: names the VM in logs and errors from now on. */
  id: string;
  pid: number;
  /** The VM's run directory (sockets, console log) after the handover. */
  runDir: string;
  consoleLog: string;
}

export interface Hypervisor {
  readonly name: string;
  /** Starts the VMM; resolves once the VM runs (QMP answered), not when the guest has booted. */
  start(spec: VmSpec, signal?: AbortSignal): Promise<VirtualMachine>;
  /** Takes over a running VMM (connects its monitor); fails if it is not running. */
  adopt(vm: AdoptableVm, signal?: AbortSignal): Promise<VirtualMachine>;
}
