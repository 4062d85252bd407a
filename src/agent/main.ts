// hako-agent: runs inside the guest VM (started by busybox init), serves the
// AgentService over ttRPC on the virtio-serial port "agent.channel.0".
import { openSync, closeSync, read, readdirSync, readFileSync, write } from "node:fs";
import { Duplex } from "node:stream";
import { createLogger } from "../runtime/logger.js";
import { TtrpcServer } from "../protocols/ttrpc/server.js";
import { registerAgentServices } from "./agent-service.js";
import { uptimeSec } from "./guest-system.js";
import { attachHelperFromEnv } from "./helper-shell.js";
import { AGENT_CHANNEL_NAME } from "./version.js";

/** After a hang-up, the port is polled every FAST_POLL_MS for FAST_RECONNECT_MS, then every SLOW_POLL_MS. */
const FAST_POLL_MS = 10;
const FAST_RECONNECT_MS = 3_000;
const SLOW_POLL_MS = 100;

const log = createLogger("hako-agent", { level: process.env.HAKO_AGENT_LOG_LEVEL ?? "warn" });

function findPort(name: string): string | undefined {
  const base = "/sys/class/virtio-ports";
  let entries: string[] = [];
  try {
    entries = readdirSync(base);
  } catch {
    return undefined;
  }
  for (const e of entries) {
    try {
      if (readFileSync(`${base}/${e}/name`, "utf8").trim() === name) return `/dev/${e}`;
    } catch {
      /* port without a name */
    }
  }
  return undefined;
}

async function waitForPort(name: string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = findPort(name);
    if (p) return p;
    if (Date.now() > deadline) throw new Error(`virtio-serial port ${name} did not appear in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Waits for a host on the open port: while none is connected, reads return
 * EOF at once, and the port gives no wake-up that Node could wait on for a
 * connect. So it polls with a bare read (building the ttRPC streams per poll
 * cost an idle cached VM ~6.5 % of a host core under TCG), quickly for a
 * while (a VM cloned from a template resumes right after its builder hung up,
 * a restarted shim comes back at once, a cached VM is often taken within
 * seconds of its warm-up), then slowly (every wake-up is guest CPU). Resolves
 * with the host's first bytes, or "error" when the port failed.
 */
async function waitForHost(fd: number): Promise<Buffer | "error"> {
  const since = performance.now();
  const buf = Buffer.alloc(64 * 1024);
  for (;;) {
    const n = await new Promise<number>((resolve) => read(fd, buf, 0, buf.length, null, (err, bytes) => resolve(err ? -1 : bytes)));
    if (n < 0) return "error";
    if (n > 0) return buf.subarray(0, n); // buf is this call's own: no copy
    await new Promise((r) => setTimeout(r, performance.now() - since < FAST_RECONNECT_MS ? FAST_POLL_MS : SLOW_POLL_MS));
  }
}

/** The most one read of the port takes. */
const PORT_READ_SIZE = 256 * 1024;
/**
 * How long a hung-up connection's teardown waits. A cached VM's hand-over
 * (the cache daemon hangs up, the pod's shim has sent its first request) is
 * on the pod start's path, and under TCG closing the old connection's ttRPC
 * server side took ~7 ms of the guest's one vCPU before the new host was
 * read; a second later the pod has started.
 */
const TEARDOWN_DELAY_MS = 1_000;

/**
 * One host connection on the open port, as the Duplex the ttRPC server
 * reads and writes: fs.read on the port (EOF: the host hung up) and
 * fs.write, starting with the bytes waitForHost read. It never closes the
 * port. Built per connection, and the first thing a new host waits for: a
 * fs.ReadStream + fs.WriteStream joined by Duplex.from took 5-30 ms of a
 * cached VM's first answer under TCG (docs/benchmarks.md, tenth stop).
 */
class PortConnection extends Duplex {
  /** The port itself failed (not a hang-up): reopen it. */
  failed = false;
  /** Resolves when the host hung up or the port failed: the port is free for the next host. */
  readonly over: Promise<void>;
  private endOver!: () => void;
  /** The host hung up: nothing more is read or written on its behalf. */
  private gone = false;
  private reading = false;
  /** One read buffer for the connection; what a read returns is copied out to its size, so a
   * 100-byte request does not hold 256 KiB until it is collected. */
  private readonly buf = Buffer.allocUnsafe(PORT_READ_SIZE);

  constructor(
    private readonly fd: number,
    first: Buffer,
  ) {
    super({ allowHalfOpen: false });
    this.over = new Promise((resolve) => (this.endOver = resolve));
    if (first.length > 0) this.push(first);
  }

  override _read(): void {
    if (this.reading || this.gone) return;
    this.reading = true;
    const buf = this.buf;
    read(this.fd, buf, 0, buf.length, null, (err, n) => {
      this.reading = false;
      if (this.destroyed) return;
      if (err) {
        this.failed = true;
        this.endOver();
        this.destroy(err);
      } else if (n === 0) {
        // The port is the next host's at once; this connection's end (the
        // server closing it, aborting what it still runs) comes later.
        this.gone = true;
        this.endOver();
        setTimeout(() => {
          if (!this.destroyed) this.push(null);
        }, TEARDOWN_DELAY_MS);
      } else this.push(Buffer.from(buf.subarray(0, n)));
    });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    // An answer for a host that hung up must not reach the next one.
    if (this.gone) return done();
    const writeFrom = (off: number): void => {
      write(this.fd, chunk, off, chunk.length - off, null, (err, n) => {
        if (err) {
          this.failed = true;
          done(err);
        } else if (off + n < chunk.length) writeFrom(off + n);
        else done();
      });
    };
    writeFrom(0);
  }

  override _final(done: (err?: Error | null) => void): void {
    done(); // the port stays open for the next host
  }
}

/**
 * Serves one host connection on the open port, starting with the bytes
 * waitForHost read; resolves when the host side closes ("closed": reads
 * return EOF until a host connects again), or with "error" when the port
 * itself failed. The connection's own teardown may still be to come.
 */
async function serveOnce(server: TtrpcServer, fd: number, first: Buffer): Promise<"closed" | "error"> {
  const conn = new PortConnection(fd, first);
  conn.on("error", () => undefined); // the server closes on it; `failed` tells a port error from a hang-up
  const handle = server.serve(conn);
  await Promise.race([conn.over, handle.closed]);
  return conn.failed ? "error" : "closed";
}

async function main(): Promise<void> {
  const helper = attachHelperFromEnv();
  const port = await waitForPort(AGENT_CHANNEL_NAME, 30_000);
  const server = new TtrpcServer({ logger: log });
  let readyMs = 0;
  registerAgentServices(server, log, () => readyMs);
  readyMs = uptimeSec() * 1000;
  log.info({ port, readyMs, helperShell: helper }, "hako-agent serving");
  // The port stays open across host connections: closing it discards what
  // the guest has not read yet, and a new host (a restarted shim, or the
  // first one of a VM cloned from a template, which may still see the
  // template builder's hang-up) can have sent its first request already.
  let fd = openSync(port, "r+");
  for (;;) {
    const first = await waitForHost(fd);
    const how = first === "error" ? "error" : await serveOnce(server, fd, first);
    if (how === "error") {
      try {
        closeSync(fd);
      } catch {
        /* already closed */
      }
      await new Promise((r) => setTimeout(r, SLOW_POLL_MS));
      fd = openSync(port, "r+");
    }
  }
}

main().catch((err: unknown) => {
  log.fatal({ err }, "hako-agent failed");
  process.exit(1);
});
