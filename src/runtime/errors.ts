// One error type per domain. Each says what failed, on which id, and what to
// do. Every domain error carries a gRPC status code so that the ttRPC layers
// (shim, agent, proxy) map them to wire statuses in one place: statusOf().
import { Code } from "../protocols/ttrpc/status.js";

export type Domain = "config" | "bundle" | "hypervisor" | "agent" | "runtime" | "image" | "resource" | "cri";

export class HakoError extends Error {
  readonly domain: Domain;
  readonly code: Code;
  readonly id: string | undefined;
  readonly hint: string | undefined;

  constructor(domain: Domain, code: Code, message: string, opts: { id?: string; hint?: string; cause?: unknown } = {}) {
    const full = [message, opts.hint ? `(${opts.hint})` : ""].filter(Boolean).join(" ");
    super(full, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = `${domain[0]!.toUpperCase()}${domain.slice(1)}Error`;
    this.domain = domain;
    this.code = code;
    this.id = opts.id;
    this.hint = opts.hint;
  }
}

export class ConfigError extends HakoError {
  constructor(message: string, opts: { hint?: string; cause?: unknown } = {}) {
    super("config", Code.INVALID_ARGUMENT, message, opts);
  }
}

export class BundleError extends HakoError {
  constructor(id: string, message: string, opts: { hint?: string; cause?: unknown } = {}) {
    super("bundle", Code.INVALID_ARGUMENT, message, { ...opts, id });
  }
}

export class HypervisorError extends HakoError {
  constructor(id: string, message: string, opts: { hint?: string; cause?: unknown; code?: Code } = {}) {
    super("hypervisor", opts.code ?? Code.UNAVAILABLE, message, { ...opts, id });
  }
}

export class AgentError extends HakoError {
  constructor(id: string, message: string, opts: { hint?: string; cause?: unknown; code?: Code } = {}) {
    super("agent", opts.code ?? Code.UNAVAILABLE, message, { ...opts, id });
  }
}

export class RuntimeError extends HakoError {
  constructor(code: Code, id: string, message: string, opts: { hint?: string; cause?: unknown } = {}) {
    super("runtime", code, message, { ...opts, id });
  }
}

export class ImageError extends HakoError {
  constructor(message: string, opts: { hint?: string; cause?: unknown } = {}) {
    super("image", Code.FAILED_PRECONDITION, message, opts);
  }
}

export class ResourceError extends HakoError {
  constructor(id: string, message: string, opts: { hint?: string; cause?: unknown } = {}) {
    super("resource", Code.INTERNAL, message, { ...opts, id });
  }
}

/** The single place that maps any thrown value to a wire status. */
export function statusOf(err: unknown): { code: Code; message: string } {
  if (err instanceof HakoError) return { code: err.code, message: err.message };
  if (err && typeof err === "object") {
    const e = err as { code?: unknown; message?: unknown };
    const message = typeof e.message === "string" ? e.message : String(err);
    if (typeof e.code === "number" && e.code >= 0 && e.code <= 16) return { code: e.code as Code, message };
    if (e.code === "ENOENT") return { code: Code.NOT_FOUND, message };
    if (e.code === "EEXIST") return { code: Code.ALREADY_EXISTS, message };
    return { code: Code.UNKNOWN, message };
  }
  return { code: Code.UNKNOWN, message: String(err) };
}
