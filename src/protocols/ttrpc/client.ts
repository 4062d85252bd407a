// ttRPC client: many unary calls multiplexed over one connection.

import { EventEmitter } from "node:events";
import net from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { RequestSchema, ResponseSchema } from "../gen/ttrpc/ttrpc_pb.js";
import {
  FrameDecoder,
  MESSAGE_LENGTH_MAX,
  MessageType,
  encodeFrame,
  shutdownTransport,
  splitTransport,
  type DecodeEvent,
  type Transport,
  type TransportParts,
  type TtrpcLogger,
} from "./framing.js";
import { Code, TtrpcError } from "./status.js";

/** Metadata key containerd uses to carry the namespace over ttrpc. */
export const NAMESPACE_METADATA_KEY = "containerd-namespace-ttrpc";

export interface CallOptions {
  /** Deadline for the call; sent to the server as timeout_nano. 0/undefined: none. */
  timeoutMs?: number;
  /** Request metadata (merged over the client's default metadata). */
  metadata?: Record<string, string>;
  /** Aborting fails the call locally with CANCELLED. */
  signal?: AbortSignal;
}

export interface TtrpcClientOptions {
  logger?: TtrpcLogger;
  /** Maximum payload length accepted and sent (default 4 MiB). */
  maxMessageLength?: number;
  /** Timeout applied when a call passes none. */
  defaultTimeoutMs?: number;
  /** Metadata sent with every call (e.g. the containerd namespace). */
  metadata?: Record<string, string>;
}

interface Pending {
  resolve: (payload: Uint8Array) => void;
  reject: (err: TtrpcError) => void;
}

const MAX_STREAM_ID = 0xffffffff;
/** Largest delay setTimeout accepts. */
const MAX_TIMER_MS = 0x7fffffff;

/**
 * A ttRPC client over one connection. Emits `close` (with the reason) once
 * the connection is gone; `closed` resolves at the same time.
 */
export class TtrpcClient extends EventEmitter {
  /** Resolves once the connection is closed (never rejects). */
  readonly closed: Promise<void>;
  private readonly parts: TransportParts;
  private readonly decoder: FrameDecoder;
  private readonly maxLength: number;
  private readonly options: TtrpcClientOptions;
  private readonly pending = new Map<number, Pending>();
  private nextStreamId = 1;
  private closeReason: TtrpcError | undefined;
  private resolveClosed!: () => void;

  constructor(transport: Transport, options: TtrpcClientOptions = {}) {
    super();
    this.options = options;
    this.maxLength = options.maxMessageLength ?? MESSAGE_LENGTH_MAX;
    this.decoder = new FrameDecoder(this.maxLength);
    this.parts = splitTransport(transport);
    this.closed = new Promise<void>((resolve) => {
      this.resolveClosed = resolve;
    });
    const { readable, writable } = this.parts;
    readable.on("data", (chunk: Buffer | string) => {
      this.onData(typeof chunk === "string" ? Buffer.from(chunk) : chunk);
    });
    readable.on("end", () => this.onTransportGone("connection closed by peer"));
    readable.on("close", () => this.onTransportGone("connection closed"));
    readable.on("error", (err: Error) => this.onTransportGone(`connection error: ${err.message}`, err));
    if (!this.parts.same) {
      writable.on("error", (err: Error) => this.onTransportGone(`connection error: ${err.message}`, err));
      writable.on("close", () => this.onTransportGone("connection closed"));
    }
  }

  /** Connects to a ttRPC server on a unix socket. */
  static connect(socketPath: string, options: TtrpcClientOptions = {}): Promise<TtrpcClient> {
    return new Promise<TtrpcClient>((resolve, reject) => {
      const sock = net.createConnection(socketPath);
      const onError = (err: Error): void => {
        sock.destroy();
        reject(err);
      };
      sock.once("error", onError);
      sock.once("connect", () => {
        sock.off("error", onError);
        resolve(new TtrpcClient(sock, options));
      });
    });
  }

  /** True once the connection is closed; further calls fail with UNAVAILABLE. */
  get isClosed(): boolean {
    return this.closeReason !== undefined;
  }

  /** Number of calls waiting for a response. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /** Performs one unary call with an already-encoded payload. */
  call(service: string, method: string, payload: Uint8Array, options: CallOptions = {}): Promise<Uint8Array> {
    if (this.closeReason !== undefined) {
      return Promise.reject(new TtrpcError(Code.UNAVAILABLE, this.closeReason.message));
    }
    const signal = options.signal;
    if (signal?.aborted) {
      return Promise.reject(new TtrpcError(Code.CANCELLED, "call cancelled", { cause: signal.reason }));
    }
    const timeoutMs = options.timeoutMs ?? this.options.defaultTimeoutMs ?? 0;
    const metadata = { ...this.options.metadata, ...options.metadata };
    const streamId = this.allocateStreamId();
    let frame: Buffer;
    try {
      const req = create(RequestSchema, {
        service,
        method,
        payload,
        timeoutNano: timeoutMs > 0 ? BigInt(Math.round(timeoutMs * 1e6)) : 0n,
        metadata: Object.entries(metadata).map(([key, value]) => ({ key, value })),
      });
      const bytes = toBinary(RequestSchema, req);
      if (bytes.length > this.maxLength) {
        return Promise.reject(
          new TtrpcError(
            Code.RESOURCE_EXHAUSTED,
            `message length ${bytes.length} exceed maximum message size of ${this.maxLength}`,
          ),
        );
      }
      frame = encodeFrame(streamId, MessageType.Request, 0, bytes, this.maxLength);
    } catch (err) {
      return Promise.reject(new TtrpcError(Code.INTERNAL, `encoding request: ${(err as Error).message}`, { cause: err }));
    }

    return new Promise<Uint8Array>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = (): void => {
        this.pending.delete(streamId);
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      const onAbort = (): void => {
        cleanup();
        reject(new TtrpcError(Code.CANCELLED, "call cancelled", { cause: signal?.reason }));
      };
      this.pending.set(streamId, {
        resolve: (p) => {
          cleanup();
          resolve(p);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      });
      if (timeoutMs > 0 && timeoutMs <= MAX_TIMER_MS) {
        timer = setTimeout(() => {
          cleanup();
          reject(new TtrpcError(Code.DEADLINE_EXCEEDED, "context deadline exceeded"));
        }, timeoutMs);
      }
      signal?.addEventListener("abort", onAbort, { once: true });
      this.write(frame);
    });
  }

  /** Closes the connection; pending calls fail with UNAVAILABLE. */
  close(): void {
    this.shutdown(new TtrpcError(Code.UNAVAILABLE, "ttrpc: closed"));
  }

  private allocateStreamId(): number {
    for (;;) {
      const id = this.nextStreamId;
      this.nextStreamId += 2;
      if (this.nextStreamId > MAX_STREAM_ID) this.nextStreamId = 1;
      if (!this.pending.has(id)) return id;
    }
  }

  private write(frame: Buffer): void {
    const { writable } = this.parts;
    if (writable.destroyed || writable.writableEnded) {
      this.onTransportGone("connection closed");
      return;
    }
    try {
      writable.write(frame);
    } catch (err) {
      this.onTransportGone(`write failed: ${(err as Error).message}`, err);
    }
  }

  private onData(chunk: Buffer): void {
    let events: DecodeEvent[];
    try {
      events = this.decoder.push(chunk);
    } catch (err) {
      this.onTransportGone(`protocol error: ${(err as Error).message}`, err);
      return;
    }
    for (const ev of events) {
      if (ev.kind === "oversize") {
        this.options.logger?.warn({ streamId: ev.streamId, length: ev.length }, "ttrpc: oversize response discarded");
        this.pending
          .get(ev.streamId)
          ?.reject(
            new TtrpcError(
              Code.RESOURCE_EXHAUSTED,
              `message length ${ev.length} exceed maximum message size of ${this.maxLength}`,
            ),
          );
      } else if (ev.kind === "frame") {
        this.onFrame(ev.streamId, ev.type, ev.payload);
      }
    }
  }

  private onFrame(streamId: number, type: number, payload: Buffer): void {
    if (type !== MessageType.Response) {
      this.options.logger?.debug({ streamId, type }, "ttrpc: ignoring unsupported message type");
      return;
    }
    const call = this.pending.get(streamId);
    if (call === undefined) {
      this.options.logger?.debug({ streamId }, "ttrpc: response for unknown stream");
      return;
    }
    let resp;
    try {
      resp = fromBinary(ResponseSchema, payload);
    } catch (err) {
      call.reject(new TtrpcError(Code.INTERNAL, `decoding response: ${(err as Error).message}`, { cause: err }));
      return;
    }
    const status = resp.status;
    if (status !== undefined && status.code !== Code.OK) {
      const code = status.code >= 0 && status.code <= 16 ? (status.code as Code) : Code.UNKNOWN;
      call.reject(
        new TtrpcError(code, status.message, {
          details: status.details.map((d) => ({ typeUrl: d.typeUrl, value: d.value })),
        }),
      );
      return;
    }
    call.resolve(resp.payload);
  }

  private onTransportGone(message: string, cause?: unknown): void {
    this.shutdown(new TtrpcError(Code.UNAVAILABLE, message, cause !== undefined ? { cause } : undefined));
  }

  private shutdown(reason: TtrpcError): void {
    if (this.closeReason !== undefined) return;
    this.closeReason = reason;
    const calls = [...this.pending.values()];
    this.pending.clear();
    for (const c of calls) {
      c.reject(new TtrpcError(Code.UNAVAILABLE, reason.message, { cause: reason.cause }));
    }
    this.decoder.end();
    shutdownTransport(this.parts);
    this.resolveClosed();
    this.emit("close", reason);
  }
}

/** Typed client for a protobuf service: methods are named by `localName`. */
export type ServiceClient<T extends DescService> = {
  [K in keyof T["method"]]: T["method"][K] extends {
    methodKind: "unary";
    input: infer I extends DescMessage;
    output: infer O extends DescMessage;
  }
    ? (request: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
    : never;
};

/**
 * Builds a typed client for `service` on top of `client`. The wire service
 * name is the fully qualified `typeName` (e.g. `hako.agent.v1.Health`), the
 * method name is the proto name (e.g. `Check`). Only unary methods are bound.
 */
export function createServiceClient<T extends DescService>(
  service: T,
  client: TtrpcClient,
  defaults: CallOptions = {},
): ServiceClient<T> {
  const out: Record<string, unknown> = {};
  for (const method of service.methods) {
    if (method.methodKind !== "unary") continue;
    out[method.localName] = async (request: MessageInitShape<DescMessage>, options: CallOptions = {}) => {
      const merged: CallOptions = {
        ...defaults,
        ...options,
        metadata: { ...defaults.metadata, ...options.metadata },
      };
      const msg = create(method.input, request);
      const reply = await client.call(service.typeName, method.name, toBinary(method.input, msg), merged);
      try {
        return fromBinary(method.output, reply);
      } catch (err) {
        throw new TtrpcError(Code.INTERNAL, `decoding ${method.output.typeName}: ${(err as Error).message}`, {
          cause: err,
        });
      }
    };
  }
  return out as ServiceClient<T>;
}
