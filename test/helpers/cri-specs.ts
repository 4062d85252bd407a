// Pod and container configurations as kubelet would send them over CRI,
// reduced to what the tests vary.
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ContainerConfigSchema, MountSchema, PodSandboxConfigSchema } from "../../src/protocols/gen/cri/runtime/v1/api_pb.js";

export interface PodSpec {
  name: string;
  uid: string;
  hostname: string;
  /** CRI log_directory (absolute); containers' log_path is relative to it. */
  logDir: string;
  dns?: string[];
  search?: string[];
  annotations?: Record<string, string>;
  /** Pod resource totals (kubelet ≥ 1.23 sends them; containerd annotates the sandbox with them). */
  memoryBytes?: bigint;
  /** hostPID: the pod's pid namespace is the host's (CRI NODE mode for the sandbox; give its containers pidMode NODE too, as kubelet does). */
  hostPid?: boolean;
}

export type PodConfig = MessageInitShape<typeof PodSandboxConfigSchema>;
export type ContainerConfig = MessageInitShape<typeof ContainerConfigSchema>;

/** CRI NamespaceMode. */
const NAMESPACE_MODE = { POD: 0, CONTAINER: 1, NODE: 2 } as const;

export function podConfig(p: PodSpec): PodConfig {
  return {
    metadata: { name: p.name, uid: p.uid, namespace: "hako-test", attempt: 0 },
    hostname: p.hostname,
    logDirectory: p.logDir,
    dnsConfig: p.dns ? { servers: p.dns, searches: p.search ?? [], options: [] } : undefined,
    labels: { app: p.name },
    annotations: p.annotations ?? {},
    linux: {
      ...(p.memoryBytes ? { resources: { memoryLimitInBytes: p.memoryBytes } } : {}),
      ...(p.hostPid ? { securityContext: { namespaceOptions: { pid: NAMESPACE_MODE.NODE } } } : {}),
    },
  };
}

export interface ContainerExtra {
  image: string;
  logPath?: string;
  mounts?: Array<MessageInitShape<typeof MountSchema>>;
  memoryLimitBytes?: bigint;
  cpuQuota?: bigint;
  cpuPeriod?: bigint;
  env?: Record<string, string>;
  /** The container's pid namespace (CRI NamespaceMode); unset is POD, the pod's, as kubelet's shareProcessNamespace. */
  pidMode?: "POD" | "CONTAINER" | "NODE";
}

export function containerConfig(name: string, args: string[], x: ContainerExtra): ContainerConfig {
  return {
    metadata: { name, attempt: 0 },
    image: { image: x.image },
    command: args.slice(0, 1),
    args: args.slice(1),
    envs: Object.entries(x.env ?? {}).map(([key, value]) => ({ key, value })),
    mounts: x.mounts ?? [],
    logPath: x.logPath ?? `${name}.log`,
    labels: { container: name },
    linux: {
      resources: {
        memoryLimitInBytes: x.memoryLimitBytes ?? 0n,
        cpuQuota: x.cpuQuota ?? 0n,
        cpuPeriod: x.cpuPeriod ?? 0n,
      },
      ...(x.pidMode === undefined ? {} : { securityContext: { namespaceOptions: { pid: NAMESPACE_MODE[x.pidMode] } } }),
    },
  };
}
