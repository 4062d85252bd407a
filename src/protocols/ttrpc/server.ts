// ttRPC server: dispatches unary requests to registered handlers. Every
// request runs concurrently; bad input is answered with a status or closes the
// one connection it came from, never the process.

import { promises as fsp } from "node:fs";
import net from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { RequestSchema, ResponseSchema } from "../gen/ttrpc/ttrpc_pb.js";
import type { Request } from "../gen/ttrpc/ttrpc_pb.js";
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
import { Code, TtrpcError, statusFromError } from "./status.js";

export interface CallContext {
  /** Request metadata; for repeated keys the last value wins. */
  metadata: Record<string, string>;
  /** Aborted when the deadline passes (reason: DEADLINE_EXCEEDED) or the connection closes (CANCELLED). */
  signal: AbortSignal;
  streamId: number;
  /** Fully qualified service name as sent, e.g. `containerd.task.v2.Task`. */
  service: string;
  /** Method name as sent, e.g. `Create`. */
  method: string;
  /** Absolute deadline (ms since epoch) if the client sent a timeout. */
  deadline?: number;
}

export type RawHandler = (payload: Uint8Array, ctx: CallContext) => Promise<Uint8Array> | Uint8Array;

export type FallbackHandler = (
  service: string,
  method: string,
  payload: Uint8Array,
  ctx: CallContext,
) => Promise<Uint8Array> | Uint8Array;

type UnaryKeys<T extends DescService> = {
  [K in keyof T["method"]]: T["method"][K] extends { methodKind: "unary" } ? K : never;
}[keyof T["method"]];

/** Implementation of a service's unary methods, keyed by `localName`. */
export type ServiceImpl<T extends DescService> = {
  [K in UnaryKeys<T>]: T["method"][K] extends {
    input: infer I extends DescMessage;
    output: infer O extends DescMessage;
  }
    ? (request: MessageShape<I>, ctx: CallContext) => Promise<MessageInitShape<O>> | MessageInitShape<O>
    : never;
};

export interface TtrpcServerOptions {
  logger?: TtrpcLogger;
  /** Maximum payload length accepted and sent (default 4 MiB). */
  maxMessageLength?: number;
}

export interface ServeHandle {
  /** Closes this connection, aborting its in-flight handlers. */
  close(): void;
  /** Resolves once the connection is closed. */
  readonly closed: Promise<void>;
}

const MAX_TIMER_MS = 0x7fffffff;

export class TtrpcServer {
  private readonly handlers = new Map<string, Map<string, RawHandler>>();
  private fallback: FallbackHandler | undefined;
  private readonly connections = new Set<ServerConnection>();
  private readonly listeners = new Set<net.Server>();
  private closing = false;
  readonly logger: TtrpcLogger | undefined;
  readonly maxLength: number;

  constructor(options: TtrpcServerOptions = {}) {
    this.logger = options.logger;
    this.maxLength = options.maxMessageLength ?? MESSAGE_LENGTH_MAX;
  }

  /** Registers the unary methods of a generated service under its `typeName`. */
  register<T extends DescService>(service: T, impl: ServiceImpl<T>): void {
    const table = impl as unknown as Record<string, unknown>;
    for (const method of service.methods) {
      if (method.methodKind !== "unary") continue;
      const fn = table[method.localName];
      if (typeof fn !== "function") continue;
      const call = fn.bind(impl) as (req: unknown, ctx: CallContext) => unknown;
      const input = method.input;
      const output = method.output;
      this.registerRaw(service.typeName, method.name, async (payload, ctx) => {
        let req: MessageShape<DescMessage>;
        try {
          req = fromBinary(input, payload);
        } catch (err) {
          throw new TtrpcError(Code.INVALID_ARGUMENT, `unmarshal ${input.typeName}: ${(err as Error).message}`, {
            cause: err,
          });
        }
        const result = (await call(req, ctx)) as MessageInitShape<DescMessage> | undefined;
        return toBinary(output, create(output, result ?? {}));
      });
    }
  }

  /** Registers a handler working on encoded payloads. */
  registerRaw(service: string, method: string, handler: RawHandler): void {
    let table = this.handlers.get(service);
    if (table === undefined) {
      table = new Map();
      this.handlers.set(service, table);
    }
    table.set(method, handler);
  }

  /** Handler for requests no registered method matches (e.g. a forwarding proxy). */
  setFallback(handler: FallbackHandler | undefined): void {
    this.fallback = handler;
  }

  /** Finds the handler for a request; throws UNIMPLEMENTED if there is none. */
  resolveHandler(service: string, method: string): RawHandler {
    const table = this.handlers.get(service);
    const handler = table?.get(method);
    if (handler !== undefined) return handler;
    const fallback = this.fallback;
    if (fallback !== undefined) {
      return (payload, ctx) => fallback(service, method, payload, ctx);
    }
    if (table === undefined) {
      throw new TtrpcError(Code.UNIMPLEMENTED, `service ${service} not implemented`);
    }
    throw new TtrpcError(Code.UNIMPLEMENTED, `method ${service}/${method} not implemented`);
  }

  /** Serves ttRPC on one connection. */
  serve(transport: Transport): ServeHandle {
    const conn = new ServerConnection(this, splitTransport(transport));
    if (this.closing) {
      conn.close();
      return conn;
    }
    this.connections.add(conn);
    void conn.closed.then(() => this.connections.delete(conn));
    return conn;
  }

  /**
   * Listens on a unix socket. An existing socket file is removed only if
   * nothing accepts connections on it; otherwise this fails with EADDRINUSE.
   */
  async listen(socketPath: string): Promise<net.Server> {
    await removeStaleSocket(socketPath);
    const srv = net.createServer((sock) => {
      sock.on("error", () => {
        /* handled by the connection's close path */
      });
      this.serve(sock);
    });
    await new Promise<void>((resolve, reject) => {
      srv.once("error", reject);
      srv.listen(socketPath, () => {
        srv.off("error", reject);
        resolve();
      });
    });
    srv.on("error", (err) => this.logger?.error({ err, socketPath }, "ttrpc: listener error"));
    this.listeners.add(srv);
    srv.once("close", () => this.listeners.delete(srv));
    return srv;
  }

  /** Number of open connections. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /** Stops all listeners and closes all connections. */
  async close(): Promise<void> {
    this.closing = true;
    const servers = [...this.listeners];
    const closing = servers.map(
      (srv) =>
        new Promise<void>((resolve) => {
          srv.close(() => resolve());
        }),
    );
    const conns = [...this.connections];
    for (const c of conns) c.close();
    await Promise.all([...closing, ...conns.map((c) => c.closed)]);
  }
}

async function removeStaleSocket(socketPath: string): Promise<void> {
  let st;
  try {
    st = await fsp.lstat(socketPath);
  } catch {
    return;
  }
  const inUse = (): Error => {
    const err = new Error(`listen EADDRINUSE: address already in use ${socketPath}`) as NodeJS.ErrnoException;
    err.code = "EADDRINUSE";
    return err;
  };
  if (!st.isSocket()) throw inUse();
  const alive = await new Promise<boolean>((resolve) => {
    const sock = net.createConnection(socketPath);
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(true);
    }, 1000);
    timer.unref();
    sock.once("connect", () => {
      clearTimeout(timer);
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => {
      clearTimeout(timer);
      sock.destroy();
      resolve(false);
    });
  });
  if (alive) throw inUse();
  await fsp.rm(socketPath, { force: true });
}

interface InFlight {
  controller: AbortController;
  timer: NodeJS.Timeout | undefined;
}

class ServerConnection implements ServeHandle {
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private readonly decoder: FrameDecoder;
  private readonly inFlight = new Map<number, InFlight>();
  private isClosed = false;

  constructor(
    private readonly server: TtrpcServer,
    private readonly parts: TransportParts,
  ) {
    this.decoder = new FrameDecoder(server.maxLength);
    this.closed = new Promise<void>((resolve) => {
      this.resolveClosed = resolve;
    });
    const { readable, writable } = parts;
    readable.on("data", (chunk: Buffer | string) => this.onData(typeof chunk === "string" ? Buffer.from(chunk) : chunk));
    readable.on("end", () => {
      const trunc = this.decoder.end();
      if (trunc !== undefined) {
        this.server.logger?.debug({ ...trunc }, "ttrpc: connection ended inside a frame");
      }
      this.close();
    });
    readable.on("error", (err: Error) => {
      this.server.logger?.debug({ err }, "ttrpc: connection error");
      this.close();
    });
    readable.on("close", () => this.close());
    if (!parts.same) {
      writable.on("error", (err: Error) => {
        this.server.logger?.debug({ err }, "ttrpc: connection write error");
        this.close();
      });
      writable.on("close", () => this.close());
    }
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    const reason = new TtrpcError(Code.CANCELLED, "connection closed");
    for (const f of this.inFlight.values()) {
      if (f.timer !== undefined) clearTimeout(f.timer);
      f.controller.abort(reason);
    }
    this.inFlight.clear();
    this.decoder.end();
    shutdownTransport(this.parts);
    this.resolveClosed();
  }

  private onData(chunk: Buffer): void {
    if (this.isClosed) return;
    let events: DecodeEvent[];
    try {
      events = this.decoder.push(chunk);
    } catch (err) {
      this.server.logger?.warn({ err }, "ttrpc: protocol error");
      this.close();
      return;
    }
    for (const ev of events) {
      if (ev.kind === "oversize") {
        if (ev.type === MessageType.Request) {
          this.sendStatus(
            ev.streamId,
            Code.RESOURCE_EXHAUSTED,
            `message length ${ev.length} exceed maximum message size of ${this.server.maxLength}`,
          );
        }
      } else if (ev.kind === "frame") {
        if (ev.type === MessageType.Request) {
          this.onRequest(ev.streamId, ev.payload);
        } else {
          this.server.logger?.debug({ streamId: ev.streamId, type: ev.type }, "ttrpc: ignoring unsupported message type");
        }
      }
    }
  }

  private onRequest(streamId: number, payload: Buffer): void {
    if (streamId % 2 === 0) {
      this.sendStatus(streamId, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams");
      return;
    }
    if (this.inFlight.has(streamId)) {
      this.sendStatus(streamId, Code.INVALID_ARGUMENT, `duplicate stream id ${streamId}`);
      return;
    }
    let req: Request;
    try {
      req = fromBinary(RequestSchema, payload);
    } catch (err) {
      this.sendStatus(streamId, Code.INVALID_ARGUMENT, `invalid request envelope: ${(err as Error).message}`);
      return;
    }
    let handler: RawHandler;
    try {
      handler = this.server.resolveHandler(req.service, req.method);
    } catch (err) {
      const st = statusFromError(err);
      this.sendStatus(streamId, st.code, st.message);
      return;
    }

    const metadata: Record<string, string> = {};
    for (const kv of req.metadata) metadata[kv.key] = kv.value;
    const controller = new AbortController();
    const ctx: CallContext = {
      metadata,
      signal: controller.signal,
      streamId,
      service: req.service,
      method: req.method,
    };
    let timer: NodeJS.Timeout | undefined;
    if (req.timeoutNano > 0n) {
      const ms = Number(req.timeoutNano / 1_000_000n);
      ctx.deadline = Date.now() + ms;
      if (ms <= MAX_TIMER_MS) {
        timer = setTimeout(() => {
          controller.abort(new TtrpcError(Code.DEADLINE_EXCEEDED, "context deadline exceeded"));
        }, ms);
      }
    }
    this.inFlight.set(streamId, { controller, timer });

    const body = req.payload;
    void Promise.resolve()
      .then(() => handler(body, ctx))
      .then(
        (result) => {
          this.finish(streamId, controller);
          this.sendResponse(streamId, result instanceof Uint8Array ? result : new Uint8Array(0));
        },
        (err: unknown) => {
          this.finish(streamId, controller);
          let st = statusFromError(err);
          if (controller.signal.aborted && err === controller.signal.reason) {
            st = statusFromError(controller.signal.reason);
          }
          this.server.logger?.debug(
            { streamId, service: req.service, method: req.method, code: st.code },
            "ttrpc: handler failed",
          );
          this.sendStatus(streamId, st.code, st.message);
        },
      )
      .catch((err: unknown) => {
        this.server.logger?.error({ err, streamId }, "ttrpc: failed to send response");
      });
  }

  private finish(streamId: number, controller: AbortController): void {
    const f = this.inFlight.get(streamId);
    if (f !== undefined && f.controller === controller) {
      if (f.timer !== undefined) clearTimeout(f.timer);
      this.inFlight.delete(streamId);
    }
  }

  private sendResponse(streamId: number, payload: Uint8Array): void {
    const bytes = toBinary(ResponseSchema, create(ResponseSchema, { payload }));
    if (bytes.length > this.server.maxLength) {
      this.sendStatus(
        streamId,
        Code.RESOURCE_EXHAUSTED,
        `response length ${bytes.length} exceed maximum message size of ${this.server.maxLength}`,
      );
      return;
    }
    this.writeFrame(streamId, bytes);
  }

  private sendStatus(streamId: number, code: Code, message: string): void {
    const bytes = toBinary(ResponseSchema, create(ResponseSchema, { status: { code, message } }));
    this.writeFrame(streamId, bytes);
  }

  private writeFrame(streamId: number, bytes: Uint8Array): void {
    if (this.isClosed) return;
    const { writable } = this.parts;
    if (writable.destroyed || writable.writableEnded) return;
    try {
      writable.write(encodeFrame(streamId, MessageType.Response, 0, bytes, this.server.maxLength));
    } catch (err) {
      this.server.logger?.debug({ err }, "ttrpc: write failed");
      this.close();
    }
  }
}
