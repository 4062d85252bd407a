// The one error type of the CRI client: which RPC failed, on what, with which
// gRPC status, and what to do about it (same style as src/runtime/errors.ts).
import { HakoError } from "../../runtime/errors.js";
import { Code, codeName } from "../../protocols/ttrpc/status.js";

/** What an RPC acted on, for messages: `container 3f2a…`, `image busybox`. */
export interface CriSubject {
  kind: "pod sandbox" | "pod" | "container" | "image" | "runtime";
  /** Id, name or reference; absent for runtime-wide calls (Version, Status, List*). */
  id?: string;
}

export interface CriErrorOptions {
  subject?: CriSubject;
  /** Endpoint the client dialled, e.g. unix:///run/containerd/containerd.sock. */
  address: string;
  /** Deadline the call had, for DEADLINE_EXCEEDED hints. */
  timeoutMs?: number;
  cause?: unknown;
}

/**
 * A failed CRI call. `code` is the gRPC status code (gRPC and ttRPC share the
 * numbering), `details` the runtime's own message, unmodified.
 */
export class CriError extends HakoError {
  /** RPC method name, e.g. `RunPodSandbox`. */
  readonly rpc: string;
  readonly details: string;
  readonly subject: CriSubject | undefined;

  constructor(rpc: string, code: Code, details: string, opts: CriErrorOptions) {
    const on = opts.subject?.id ? ` for ${opts.subject.kind} ${opts.subject.id}` : "";
    super("cri", code, `CRI ${rpc}${on} failed: ${codeName(code)}: ${details}`, {
      id: opts.subject?.id,
      hint: hintFor(rpc, code, opts),
      cause: opts.cause,
    });
    this.rpc = rpc;
    this.details = details;
    this.subject = opts.subject;
  }

  get codeName(): string {
    return codeName(this.code);
  }
}

function hintFor(rpc: string, code: Code, opts: CriErrorOptions): string {
  switch (code) {
    case Code.UNAVAILABLE:
      return `is containerd running with its CRI plugin at ${opts.address}? Set --address or CONTAINER_RUNTIME_ENDPOINT to its socket`;
    case Code.DEADLINE_EXCEEDED:
      return `no answer within ${formatMs(opts.timeoutMs)}; a VM runtime under TCG can be slow: raise --timeout (or the call's timeoutMs)`;
    case Code.CANCELLED:
      return "the call was cancelled by the client";
    case Code.UNIMPLEMENTED:
      return `the endpoint does not serve runtime.v1 ${rpc}: is it containerd >= 1.6 with the CRI plugin enabled (not disabled_plugins)?`;
    case Code.PERMISSION_DENIED:
    case Code.UNAUTHENTICATED:
      return "the CRI socket is root-only: run as root";
    case Code.NOT_FOUND:
      return opts.subject?.kind === "image"
        ? "pull it first (`hako cri images` lists what is there)"
        : "check the id with `hako cri pods` or `hako cri ps -a`";
    case Code.INVALID_ARGUMENT:
      return "check the request: the config's fields and ids";
    case Code.FAILED_PRECONDITION:
      return "the object is in the wrong state for this call (stop it before removing it?)";
    case Code.ALREADY_EXISTS:
      return "a pod or container with that name and attempt exists: remove it or bump metadata.attempt";
    case Code.RESOURCE_EXHAUSTED:
      return "a message was over the size limit";
    default:
      return "see containerd's log (journalctl -u containerd) for the cause";
  }
}

function formatMs(ms: number | undefined): string {
  if (ms === undefined) return "the deadline";
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}
