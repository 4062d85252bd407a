// The seam for sharing host files into the guest. Each sandbox exports exactly
// one host directory (its own shared/ directory); container rootfs and volumes
// are bind-mounted inside it.

export interface SharedPath {
  hostPath: string;
  guestPath: string;
}

/** A mount the agent makes in the guest (the fields of the agent's Storage message; the agent's mountStorage takes it). */
export interface GuestStorage {
  driver: string;
  source: string;
  fstype: string;
  options: string[];
  mountPoint: string;
}

export interface ShareFs {
  /** 9p mount tag / device name of the sandbox share. */
  readonly tag: string;
  /** Host directory exported to the VM. */
  readonly hostDir: string;
  /** Where the guest mounts it. */
  readonly guestDir: string;
  /** How the guest mounts the share (an agent Storage: CreateSandbox's storages). */
  guestStorage(): GuestStorage;
  /** Makes `source` (a host directory or file) visible in the guest; returns both paths. */
  share(containerId: string, name: string, source: string, opts?: { readonly?: boolean }): Promise<SharedPath>;
  /** Removes every share of a container. */
  unshareContainer(containerId: string): Promise<void>;
  /** Removes everything; the host directory is gone afterwards. */
  cleanup(): Promise<void>;
}
