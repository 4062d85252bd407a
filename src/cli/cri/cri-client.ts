// A small CRI v1 client (runtime.v1 RuntimeService + ImageService) over gRPC,
// for tests and developers: what crictl does, without crictl.
//
// Transport is @grpc/grpc-js (h2c on a unix socket); messages are the
// protobuf-es types generated from src/protocols/proto/cri/runtime/v1/api.proto,
// encoded with toBinary/fromBinary. Every RPC has a deadline (default 2 min:
// RunPodSandbox on a VM runtime under TCG takes ~10 s, image pulls longer) and
// every failure becomes a CriError naming the RPC, its subject and the status.
//
// Usage:
//   const cri = new CriClient("unix:///run/containerd/containerd.sock");
//   try {
//     const podId = await cri.runPodSandbox(podConfig, "hako");
//     const cid = await cri.createContainer(podId, containerConfig, podConfig);
//     await cri.startContainer(cid);
//     const r = await cri.execSync(cid, ["cat", "/etc/hostname"]);
//   } finally { cri.close(); }
import { Client, Metadata, credentials, type ServiceError } from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescMethodUnary, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import {
  ImageService,
  RuntimeService,
  type Container,
  type ContainerConfigSchema,
  type ContainerFilterSchema,
  type ContainerStats,
  type ContainerStatsFilterSchema,
  type ContainerStatusResponse,
  type ExecSyncResponse,
  type Image,
  type ImageFilterSchema,
  type ImageStatusResponse,
  type AuthConfigSchema,
  type PodSandbox,
  type PodSandboxConfigSchema,
  type PodSandboxFilterSchema,
  type PodSandboxStatusResponse,
  type StatusResponse,
  type VersionResponse,
} from "../../protocols/gen/cri/runtime/v1/api_pb.js";
import { Code } from "../../protocols/ttrpc/status.js";
import { CriError, type CriSubject } from "./cri-error.js";

export { CriError, type CriSubject } from "./cri-error.js";

/** containerd's default gRPC socket (CRI is served on it too). */
export const DEFAULT_CRI_ADDRESS = "unix:///run/containerd/containerd.sock";
/** Deadline of a call that names none. */
export const DEFAULT_CRI_TIMEOUT_MS = 120_000;
/** Extra time a call gets beyond a server-side timeout it carries (ExecSync, StopContainer). */
const SERVER_TIMEOUT_MARGIN_MS = 30_000;
/** crictl's limit too: ListImages/ListContainerStats answers can pass gRPC's 4 MiB default. */
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

// Plain-object shapes callers pass (all fields optional, nested messages as objects).
export type PodSandboxConfigInit = MessageInitShape<typeof PodSandboxConfigSchema>;
export type ContainerConfigInit = MessageInitShape<typeof ContainerConfigSchema>;
export type PodSandboxFilterInit = MessageInitShape<typeof PodSandboxFilterSchema>;
export type ContainerFilterInit = MessageInitShape<typeof ContainerFilterSchema>;
export type ContainerStatsFilterInit = MessageInitShape<typeof ContainerStatsFilterSchema>;
export type ImageFilterInit = MessageInitShape<typeof ImageFilterSchema>;
export type AuthConfigInit = MessageInitShape<typeof AuthConfigSchema>;

export interface CriCallOptions {
  /** Deadline of this call in ms (default: the client's, 2 min). */
  timeoutMs?: number;
  /** Aborting cancels the call (it then fails with CANCELLED). */
  signal?: AbortSignal;
}

export interface CriClientOptions {
  /** Deadline of calls that pass none (default 2 min). */
  defaultTimeoutMs?: number;
}

/**
 * Normalizes a CRI endpoint for grpc-js: `unix:///abs/path` and `unix:/abs`
 * stay, a bare absolute path gets `unix://`, anything else (dns:, ipv4:,
 * host:port) is passed on.
 */
export function normalizeCriAddress(address: string): string {
  const trimmed = address.trim();
  if (trimmed.startsWith("/")) return `unix://${trimmed}`;
  return trimmed;
}

export class CriClient {
  /** The endpoint as grpc-js dials it. */
  readonly address: string;
  readonly defaultTimeoutMs: number;
  private readonly channel: Client;

  constructor(address: string = DEFAULT_CRI_ADDRESS, opts: CriClientOptions = {}) {
    this.address = normalizeCriAddress(address);
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? DEFAULT_CRI_TIMEOUT_MS;
    this.channel = new Client(this.address, credentials.createInsecure(), {
      "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
      "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    });
  }

  /** Closes the connection; calls still running fail with CANCELLED or UNAVAILABLE. */
  close(): void {
    this.channel.close();
  }

  // ------------------------------------------------------------ runtime

  /** Runtime name and versions. `version` is the CRI version this client speaks. */
  async version(opts?: CriCallOptions): Promise<VersionResponse> {
    return this.call(RuntimeService.method.version, { version: "v1" }, { kind: "runtime" }, opts);
  }

  /** Runtime conditions; with verbose, `info` holds the runtime's config as JSON strings. */
  async status(verbose = false, opts?: CriCallOptions): Promise<StatusResponse> {
    return this.call(RuntimeService.method.status, { verbose }, { kind: "runtime" }, opts);
  }

  // ------------------------------------------------------------ pod sandboxes

  /** Creates and starts a pod sandbox; returns its id. handler "" = the runtime's default. */
  async runPodSandbox(config: PodSandboxConfigInit, runtimeHandler = "", opts?: CriCallOptions): Promise<string> {
    const r = await this.call(RuntimeService.method.runPodSandbox, { config, runtimeHandler }, podSubject(config), opts);
    return r.podSandboxId;
  }

  async stopPodSandbox(podSandboxId: string, opts?: CriCallOptions): Promise<void> {
    await this.call(RuntimeService.method.stopPodSandbox, { podSandboxId }, sandbox(podSandboxId), opts);
  }

  async removePodSandbox(podSandboxId: string, opts?: CriCallOptions): Promise<void> {
    await this.call(RuntimeService.method.removePodSandbox, { podSandboxId }, sandbox(podSandboxId), opts);
  }

  /** Status of a pod; with verbose (crictl's default) `info.info` is containerd's JSON details. */
  async podSandboxStatus(podSandboxId: string, opts: CriCallOptions & { verbose?: boolean } = {}): Promise<PodSandboxStatusResponse> {
    const request = { podSandboxId, verbose: opts.verbose ?? false };
    return this.call(RuntimeService.method.podSandboxStatus, request, sandbox(podSandboxId), opts);
  }

  async listPodSandbox(filter?: PodSandboxFilterInit, opts?: CriCallOptions): Promise<PodSandbox[]> {
    const r = await this.call(RuntimeService.method.listPodSandbox, { filter }, { kind: "runtime" }, opts);
    return r.items;
  }

  // ------------------------------------------------------------ containers

  /** Creates a container in a pod; `sandboxConfig` is the config the pod was run with. Returns its id. */
  async createContainer(
    podSandboxId: string,
    config: ContainerConfigInit,
    sandboxConfig: PodSandboxConfigInit,
    opts?: CriCallOptions,
  ): Promise<string> {
    const r = await this.call(RuntimeService.method.createContainer, { podSandboxId, config, sandboxConfig }, sandbox(podSandboxId), opts);
    return r.containerId;
  }

  async startContainer(containerId: string, opts?: CriCallOptions): Promise<void> {
    await this.call(RuntimeService.method.startContainer, { containerId }, container(containerId), opts);
  }

  /**
   * Sends the stop signal, then SIGKILL after `timeoutSeconds` (0: at once).
   * The call's deadline is at least that plus a margin.
   */
  async stopContainer(containerId: string, timeoutSeconds = 0, opts: CriCallOptions = {}): Promise<void> {
    const callOpts = this.withServerTimeout(opts, timeoutSeconds);
    await this.call(RuntimeService.method.stopContainer, { containerId, timeout: BigInt(timeoutSeconds) }, container(containerId), callOpts);
  }

  async removeContainer(containerId: string, opts?: CriCallOptions): Promise<void> {
    await this.call(RuntimeService.method.removeContainer, { containerId }, container(containerId), opts);
  }

  async listContainers(filter?: ContainerFilterInit, opts?: CriCallOptions): Promise<Container[]> {
    const r = await this.call(RuntimeService.method.listContainers, { filter }, { kind: "runtime" }, opts);
    return r.containers;
  }

  async containerStatus(containerId: string, opts: CriCallOptions & { verbose?: boolean } = {}): Promise<ContainerStatusResponse> {
    const request = { containerId, verbose: opts.verbose ?? false };
    return this.call(RuntimeService.method.containerStatus, request, container(containerId), opts);
  }

  /**
   * Runs `cmd` in the container and returns its exit code and whole output.
   * `timeoutSeconds` (0 = none) is enforced by the runtime; the call's own
   * deadline is at least that plus a margin. A non-zero exit is no error.
   */
  async execSync(containerId: string, cmd: string[], opts: CriCallOptions & { timeoutSeconds?: number } = {}): Promise<ExecSyncResponse> {
    const timeoutSeconds = opts.timeoutSeconds ?? 0;
    const request = { containerId, cmd, timeout: BigInt(timeoutSeconds) };
    return this.call(RuntimeService.method.execSync, request, container(containerId), this.withServerTimeout(opts, timeoutSeconds));
  }

  /** Stats of one container (unset if the runtime has none yet). */
  async containerStats(containerId: string, opts?: CriCallOptions): Promise<ContainerStats | undefined> {
    const r = await this.call(RuntimeService.method.containerStats, { containerId }, container(containerId), opts);
    return r.stats;
  }

  async listContainerStats(filter?: ContainerStatsFilterInit, opts?: CriCallOptions): Promise<ContainerStats[]> {
    const r = await this.call(RuntimeService.method.listContainerStats, { filter }, { kind: "runtime" }, opts);
    return r.stats;
  }

  // ------------------------------------------------------------ images

  async listImages(filter?: ImageFilterInit, opts?: CriCallOptions): Promise<Image[]> {
    const r = await this.call(ImageService.method.listImages, { filter }, { kind: "runtime" }, opts);
    return r.images;
  }

  /** `image` is unset in the answer when the runtime does not have it. */
  async imageStatus(image: string, opts: CriCallOptions & { verbose?: boolean } = {}): Promise<ImageStatusResponse> {
    const request = { image: { image }, verbose: opts.verbose ?? false };
    return this.call(ImageService.method.imageStatus, request, { kind: "image", id: image }, opts);
  }

  /** Pulls an image; returns its reference (an image id, sha256:…). */
  async pullImage(
    image: string,
    opts: CriCallOptions & { auth?: AuthConfigInit; sandboxConfig?: PodSandboxConfigInit } = {},
  ): Promise<string> {
    const request = { image: { image }, auth: opts.auth, sandboxConfig: opts.sandboxConfig };
    const r = await this.call(ImageService.method.pullImage, request, { kind: "image", id: image }, opts);
    return r.imageRef;
  }

  async removeImage(image: string, opts?: CriCallOptions): Promise<void> {
    await this.call(ImageService.method.removeImage, { image: { image } }, { kind: "image", id: image }, opts);
  }

  // ------------------------------------------------------------ plumbing

  private withServerTimeout(opts: CriCallOptions, serverTimeoutSeconds: number): CriCallOptions {
    if (opts.timeoutMs !== undefined || serverTimeoutSeconds <= 0) return opts;
    return { ...opts, timeoutMs: Math.max(this.defaultTimeoutMs, serverTimeoutSeconds * 1000 + SERVER_TIMEOUT_MARGIN_MS) };
  }

  /** One unary call: `/runtime.v1.<Service>/<Method>` with a deadline; failures become CriError. */
  private call<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    init: MessageInitShape<I>,
    subject: CriSubject,
    opts: CriCallOptions = {},
  ): Promise<MessageShape<O>> {
    const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;
    const path = `/${method.parent.typeName}/${method.name}`;
    const request = create(method.input, init);
    const fail = (code: Code, details: string, cause?: unknown): CriError =>
      new CriError(method.name, code, details, { subject, address: this.address, timeoutMs, cause });

    return new Promise<MessageShape<O>>((resolve, reject) => {
      if (opts.signal?.aborted) return reject(fail(Code.CANCELLED, "aborted before the call was made"));
      const call = this.channel.makeUnaryRequest<MessageShape<I>, MessageShape<O>>(
        path,
        (message) => asBuffer(toBinary(method.input, message)),
        (bytes) => fromBinary(method.output, asPlainBytes(bytes)),
        request,
        new Metadata(),
        { deadline: Date.now() + timeoutMs },
        (err: ServiceError | null, response?: MessageShape<O>) => {
          opts.signal?.removeEventListener("abort", onAbort);
          if (err) return reject(fail(toCode(err.code), tidyDetails(err.details || err.message), err));
          if (response === undefined) return reject(fail(Code.INTERNAL, "the server sent no response message"));
          resolve(response);
        },
      );
      const onAbort = (): void => call.cancel();
      opts.signal?.addEventListener("abort", onAbort, { once: true });
    });
  }
}

/** A Buffer view of the encoded bytes (grpc-js wants Buffer), without copying. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * A plain Uint8Array view of a received Buffer, so that bytes fields
 * (ExecSync stdout/stderr) come out as the Uint8Array their type says.
 */
function asPlainBytes(buffer: Buffer): Uint8Array {
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

/** grpc-js ends connection failures with an empty "Resolution note:"; drop it. */
function tidyDetails(details: string): string {
  return details.replace(/\s*Resolution note:\s*$/, "");
}

function toCode(grpcStatus: number): Code {
  return Number.isInteger(grpcStatus) && grpcStatus >= 0 && grpcStatus <= Code.UNAUTHENTICATED ? (grpcStatus as Code) : Code.UNKNOWN;
}

const sandbox = (id: string): CriSubject => ({ kind: "pod sandbox", id });
const container = (id: string): CriSubject => ({ kind: "container", id });

/** RunPodSandbox has no id yet: name the pod by namespace/name. */
function podSubject(config: PodSandboxConfigInit): CriSubject {
  const md = config.metadata;
  if (!md?.name) return { kind: "pod" };
  return { kind: "pod", id: md.namespace ? `${md.namespace}/${md.name}` : md.name };
}
