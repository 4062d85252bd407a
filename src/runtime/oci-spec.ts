// OCI bundle loading, validation, and the translation of a host spec into
// the spec crun runs in the guest.
import { readFileSync, statSync } from "node:fs";
import { isAbsolute, join } from "node:path";
import { BundleError } from "./errors.js";

export interface OciMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

export interface OciProcess {
  terminal?: boolean;
  consoleSize?: { height: number; width: number };
  user?: { uid: number; gid: number; additionalGids?: number[] };
  args?: string[];
  env?: string[];
  cwd?: string;
  [k: string]: unknown;
}

export interface OciSpec {
  ociVersion?: string;
  process?: OciProcess;
  root?: { path: string; readonly?: boolean };
  hostname?: string;
  mounts?: OciMount[];
  annotations?: Record<string, string>;
  linux?: {
    namespaces?: Array<{ type: string; path?: string }>;
    cgroupsPath?: string;
    [k: string]: unknown;
  };
  [k: string]: unknown;
}

export interface Bundle {
  dir: string;
  spec: OciSpec;
  /** Absolute host path of the container's root filesystem. */
  rootfs: string;
}

/** Reads and validates <dir>/config.json. Every problem is a one-line BundleError. */
export function loadBundle(id: string, dir: string): Bundle {
  const cfgPath = join(dir, "config.json");
  let text: string;
  try {
    text = readFileSync(cfgPath, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new BundleError(id, code === "ENOENT" ? `bundle ${dir} has no config.json` : `cannot read ${cfgPath}: ${(err as Error).message}`, {
      hint: "create one with `crun spec` or `runc spec`",
    });
  }
  let spec: OciSpec;
  try {
    spec = JSON.parse(text) as OciSpec;
  } catch (err) {
    throw new BundleError(id, `${cfgPath} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof spec !== "object" || spec === null || Array.isArray(spec)) throw new BundleError(id, `${cfgPath} must hold a JSON object`);
  return { dir, spec, rootfs: validateSpec(id, dir, spec) };
}

/** Checks what hako needs of a spec; returns the absolute rootfs path. */
export function validateSpec(id: string, dir: string, spec: OciSpec): string {
  if (!spec.process) throw new BundleError(id, "config.json has no process section");
  if (!Array.isArray(spec.process.args) || spec.process.args.length === 0 || spec.process.args.some((a) => typeof a !== "string"))
    throw new BundleError(id, "config.json process.args is missing or empty", { hint: "set the command to run" });
  if (!spec.root || typeof spec.root.path !== "string" || spec.root.path === "") throw new BundleError(id, "config.json has no root.path");
  const rootfs = isAbsolute(spec.root.path) ? spec.root.path : join(dir, spec.root.path);
  let isDir = false;
  try {
    isDir = statSync(rootfs).isDirectory();
  } catch {
    throw new BundleError(id, `root filesystem ${rootfs} does not exist`);
  }
  if (!isDir) throw new BundleError(id, `root filesystem ${rootfs} is not a directory`);
  const netns = networkNamespacePath(spec);
  if (netns !== undefined) {
    if (!isAbsolute(netns)) throw new BundleError(id, `config.json network namespace path ${JSON.stringify(netns)} is not absolute`, { hint: "give the netns as /var/run/netns/<name> or /proc/<pid>/ns/net" });
    try {
      statSync(netns);
    } catch {
      throw new BundleError(id, `network namespace ${netns} (config.json linux.namespaces) does not exist`, { hint: "create it first (ip netns add), or drop its path to run without a network" });
    }
  }
  return rootfs;
}

/**
 * The network namespace a spec names by path (CRI: the pod netns that CNI
 * filled), whose interfaces the sandbox's VM takes over; undefined when the
 * spec asks for a new (empty) one or none: then the VM has no NIC.
 */
export function networkNamespacePath(spec: OciSpec): string | undefined {
  const ns = (spec.linux?.namespaces ?? []).find((n) => n.type === "network");
  return ns?.path !== undefined && ns.path !== "" ? ns.path : undefined;
}

/**
 * Whether a pod's infra container shares the host's pid namespace (CRI's
 * NODE mode, `hostPID`): its spec then names no pid namespace at all.
 */
export function sharesHostPidNamespace(spec: OciSpec): boolean {
  return !(spec.linux?.namespaces ?? []).some((n) => n.type === "pid");
}

/** Namespaces that stay per container in the guest; the VM itself isolates the rest. */
const GUEST_NAMESPACES = new Set(["pid", "mount", "ipc", "uts", "cgroup"]);

/**
 * The pod's /dev/shm in the guest (a directory on the guest's /run tmpfs,
 * made by the agent): containers of a pod share it, as CRI asks by binding
 * the sandbox's shm into each of them; a 9p copy could not share memory.
 */
export const GUEST_POD_SHM_DIR = "/run/hako/pod-shm";

/**
 * The pod's pid namespace in the guest, for containers that share it (CRI's
 * POD pid mode: a pid namespace given by path, the sandbox's). The agent
 * makes it when a container first joins, held by a process of its own as pid 1 (as kubelet's
 * pause is with shareProcessNamespace), and puts the holder's
 * /proc/<pid>/ns/pid in the container's spec (src/agent/pod-pid-namespace.ts).
 * So a pod's processes do not see, nor signal, the agent and the guest's own.
 */
export const GUEST_POD_PID_NS = "hako:pod-pid-namespace";

const isBindMount = (m: { type?: string; options?: string[] }): boolean =>
  m.type === "bind" || (m.options ?? []).some((o) => o === "bind" || o === "rbind");

/**
 * The spec crun runs in the guest: root on the shared filesystem, network
 * shared with the VM (the VM is the pod), cgroup under /hako, host-only
 * security labels dropped, bind mounts replaced by their shared copies.
 */
export function guestSpec(id: string, spec: OciSpec, guestRoot: string, guestMounts: Map<number, string>, opts: { hostPid?: boolean } = {}): OciSpec {
  const out = structuredClone(spec);
  out.root = { path: guestRoot, readonly: spec.root?.readonly ?? false };
  out.process = { ...out.process, terminal: false };
  out.mounts = (spec.mounts ?? []).map((m, i) => {
    if (m.destination === "/dev/shm" && isBindMount(m)) return { ...m, source: GUEST_POD_SHM_DIR };
    const shared = guestMounts.get(i);
    return shared ? { ...m, source: shared } : m;
  });
  // crun creates device nodes under /dev; on the 9p rootfs mknod fails, so
  // /dev is always a tmpfs (as in runc's and containerd's default specs).
  if (!out.mounts.some((m) => m.destination === "/dev"))
    out.mounts.unshift({ destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"] });
  const linux = { ...(out.linux ?? {}) };
  // A namespace given by path is one to join: in a pod, the sandbox's. The
  // guest's own ipc, uts, mount and cgroup namespaces are the pod's, so
  // joining means not creating one. Its root pid namespace holds the agent:
  // the pod's is one the agent makes (GUEST_POD_PID_NS), unless the pod asked
  // for the host's (hostPID), which is the VM's.
  const joinsPodPid = (n: { type: string; path?: string }): boolean => n.type === "pid" && !!n.path && opts.hostPid !== true;
  linux.namespaces = (linux.namespaces ?? [])
    .filter((n) => GUEST_NAMESPACES.has(n.type) && (!n.path || joinsPodPid(n)))
    .map((n) => (joinsPodPid(n) ? { type: n.type, path: GUEST_POD_PID_NS } : { type: n.type }));
  // The guest is cgroup v2 only: like containerd on a v2 host, give each
  // container its own cgroup namespace, so its /sys/fs/cgroup is its cgroup
  // (memory.max, cpu.max) whatever the host's cgroup mode made the spec say.
  if (!linux.namespaces.some((n) => n.type === "cgroup")) linux.namespaces.push({ type: "cgroup" });
  linux.cgroupsPath = `/hako/${id}`;
  delete linux["seccomp"];
  delete linux["mountLabel"];
  delete (out.process as Record<string, unknown>)["apparmorProfile"];
  delete (out.process as Record<string, unknown>)["selinuxLabel"];
  out.linux = linux;
  delete out["hooks"];
  return out;
}

/** Host bind mounts of a spec (index → source) that must be shared into the guest. */
export function bindMountsToShare(spec: OciSpec): Array<{ index: number; source: string; readonly: boolean }> {
  const out: Array<{ index: number; source: string; readonly: boolean }> = [];
  (spec.mounts ?? []).forEach((m, index) => {
    if (m.destination === "/dev/shm") return;
    if (isBindMount(m) && m.source && isAbsolute(m.source)) out.push({ index, source: m.source, readonly: (m.options ?? []).includes("ro") });
  });
  return out;
}
