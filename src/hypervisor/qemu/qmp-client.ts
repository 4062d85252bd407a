// QEMU Machine Protocol client over a unix socket: newline-delimited JSON.
// connect() retries until the socket exists (QEMU creates it shortly after
// spawn), reads the greeting and negotiates capabilities. Commands carry ids;
// asynchronous events are emitted as "event" (QmpEvent) and under their own
// name ("SHUTDOWN", "STOP", "RESUME", ...).
import { EventEmitter } from "node:events";
import { createConnection, type Socket } from "node:net";
import { Code } from "../../protocols/ttrpc/status.js";
import { HypervisorError } from "../../runtime/errors.js";
import type { Logger } from "../../runtime/logger.js";

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpGreeting {
  QMP: { version?: { qemu?: { major: number; minor: number; micro: number }; package?: string }; capabilities?: unknown[] };
}

export interface QmpConnectOptions {
  socketPath: string;
  /** Sandbox id, for error messages. */
  id: string;
  /** Absolute deadline (Date.now() based) for the socket to accept and the greeting to arrive. */
  deadline: number;
  /** Stops retrying (e.g. QEMU exited or the caller gave up). */
  signal?: AbortSignal;
  /** Delay between connection attempts. */
  retryMs?: number;
  /** Default timeout of each command. */
  commandTimeoutMs?: number;
  logger?: Logger;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

const RETRYABLE = new Set(["ENOENT", "ECONNREFUSED", "EAGAIN"]);
const MAX_LINE = 16 * 1024 * 1024;

export class QmpClient extends EventEmitter {
  readonly id: string;
  readonly socketPath: string;
  greeting: QmpGreeting | undefined;
  private readonly sock: Socket;
  private readonly pending = new Map<number, Pending>();
  private readonly commandTimeoutMs: number;
  private readonly logger: Logger | undefined;
  private nextId = 1;
  private buf = "";
  private closedErr: Error | undefined;
  private greetingWaiter: ((g: QmpGreeting | Error) => void) | undefined;

  private constructor(sock: Socket, opts: QmpConnectOptions) {
    super();
    this.sock = sock;
    this.id = opts.id;
    this.socketPath = opts.socketPath;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 30_000;
    this.logger = opts.logger;
    sock.setEncoding("utf8");
    sock.on("data", (chunk: string) => this.onData(chunk));
    sock.on("error", (err) => this.shutdown(this.err(`QMP connection ${this.socketPath} failed: ${err.message}`, err)));
    sock.on("close", () => this.shutdown(this.err(`QMP connection ${this.socketPath} closed (QEMU exited or closed the monitor)`)));
  }

  /** Connects (retrying until opts.deadline), reads the greeting and sends qmp_capabilities. */
  static async connect(opts: QmpConnectOptions): Promise<QmpClient> {
    const retryMs = opts.retryMs ?? 20;
    let lastErr: unknown;
    for (;;) {
      if (opts.signal?.aborted) {
        throw new HypervisorError(opts.id, `gave up connecting to QMP socket ${opts.socketPath}`, { code: Code.CANCELLED, cause: opts.signal.reason });
      }
      const left = opts.deadline - Date.now();
      if (left <= 0) {
        const why = lastErr instanceof Error ? `: ${lastErr.message}` : "";
        throw new HypervisorError(opts.id, `QMP socket ${opts.socketPath} did not accept connections in time${why}`, {
          code: Code.DEADLINE_EXCEEDED,
          hint: "QEMU is slow to start or hung; raise hypervisor.qemu.boot_timeout or check the QEMU log",
          cause: lastErr,
        });
      }
      try {
        const sock = await dial(opts.socketPath);
        const client = new QmpClient(sock, opts);
        try {
          await client.handshake(opts.deadline, opts.signal);
          return client;
        } catch (err) {
          client.close();
          throw err;
        }
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (err instanceof HypervisorError || !code || !RETRYABLE.has(code)) {
          if (err instanceof HypervisorError) throw err;
          throw new HypervisorError(opts.id, `cannot connect to QMP socket ${opts.socketPath}: ${(err as Error).message}`, { cause: err });
        }
        lastErr = err;
      }
      await sleep(Math.min(retryMs, Math.max(1, opts.deadline - Date.now())), opts.signal);
    }
  }

  private async handshake(deadline: number, signal?: AbortSignal): Promise<void> {
    const greeting = await new Promise<QmpGreeting>((resolve, reject) => {
      const timer = setTimeout(() => done(this.err(`no QMP greeting on ${this.socketPath} in time`, undefined, Code.DEADLINE_EXCEEDED)), Math.max(1, deadline - Date.now()));
      const onAbort = (): void => done(this.err(`gave up waiting for the QMP greeting on ${this.socketPath}`, signal?.reason, Code.CANCELLED));
      signal?.addEventListener("abort", onAbort, { once: true });
      const done = (g: QmpGreeting | Error): void => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.greetingWaiter = undefined;
        if (g instanceof Error) reject(g);
        else resolve(g);
      };
      if (this.closedErr) return done(this.closedErr);
      this.greetingWaiter = done;
    });
    this.greeting = greeting;
    await this.execute("qmp_capabilities", undefined, { timeoutMs: Math.max(1, deadline - Date.now()) });
  }

  /** Runs a QMP command and resolves with its "return" value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closedErr) {
      return Promise.reject(this.err(`cannot run QMP command ${command}: ${this.closedErr.message}`, this.closedErr));
    }
    const id = this.nextId++;
    const msg: Record<string, unknown> = { execute: command, id };
    if (args !== undefined) msg.arguments = args;
    return new Promise<T>((resolve, reject) => {
      const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
      const timer =
        timeoutMs > 0
          ? setTimeout(() => {
              this.pending.delete(id);
              reject(this.err(`QMP command ${command} got no reply within ${timeoutMs} ms`, undefined, Code.DEADLINE_EXCEEDED));
            }, timeoutMs)
          : undefined;
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.logger?.debug({ qmp: command, id }, "qmp execute");
      this.sock.write(JSON.stringify(msg) + "\n");
    });
  }

  /** Whether the connection is still open. */
  get connected(): boolean {
    return this.closedErr === undefined;
  }

  close(): void {
    this.shutdown(this.err(`QMP connection ${this.socketPath} was closed by hako`));
    this.sock.destroy();
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line !== "") this.onLine(line);
    }
    if (this.buf.length > MAX_LINE) {
      this.sock.destroy();
      this.shutdown(this.err(`QMP message on ${this.socketPath} exceeds ${MAX_LINE} bytes`));
    }
  }

  private onLine(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.logger?.warn({ line: line.slice(0, 200) }, "qmp: ignoring a line that is not JSON");
      return;
    }
    if (msg.QMP !== undefined) {
      this.greetingWaiter?.(msg as unknown as QmpGreeting);
      return;
    }
    if (typeof msg.event === "string") {
      const ev = msg as unknown as QmpEvent;
      this.logger?.debug({ qmpEvent: ev.event, data: ev.data }, "qmp event");
      this.emit("event", ev);
      this.emit(ev.event, ev);
      return;
    }
    const id = msg.id;
    if (typeof id !== "number") return;
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    if (msg.error !== undefined) {
      const e = msg.error as { class?: string; desc?: string };
      p.reject(this.err(`QMP command ${p.command} failed: ${e.desc ?? "unknown error"}${e.class ? ` (${e.class})` : ""}`, undefined, Code.FAILED_PRECONDITION));
    } else {
      p.resolve(msg.return);
    }
  }

  private shutdown(err: Error): void {
    if (this.closedErr) return;
    this.closedErr = err;
    this.greetingWaiter?.(err);
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      if (p.timer) clearTimeout(p.timer);
      p.reject(this.err(`QMP command ${p.command} did not complete: ${err.message}`, err));
    }
    this.emit("close", err);
  }

  private err(message: string, cause?: unknown, code?: Code): HypervisorError {
    return new HypervisorError(this.id, message, { cause, code });
  }
}

function dial(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection({ path });
    const onErr = (err: Error): void => {
      s.destroy();
      reject(err);
    };
    s.once("error", onErr);
    s.once("connect", () => {
      s.off("error", onErr);
      resolve(s);
    });
  });
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
