// Host-wide start slots: at most N sandboxes boot (or restore) their VM at a
// time; the others queue. A VM start is CPU-bound guest work (under TCG,
// translation of everything the guest runs), and when kubelet asks for many
// pods at once, N starts sharing the cores finish sooner, in total, than all
// of them time-sliced together, and each pod's own start is shorter. Measured
// (docs/benchmarks.md): 40 templated pods on 2 cores, 16 requested at a time:
// all running after 39.5–43.5 s with no limit, 36.8–39.5 s with 4 slots,
// 35.4–38.8 s with 2; QEMU CPU 67–71 s, 60–64 s, 58–62 s.
//
// A slot is an abstract Unix socket (`\0hako/start-slot/<i>`, in the host's
// network namespace) that its holder listens on: binding is exclusive, and
// the kernel frees it when the holder exits, however it exits. So there is no
// lock file to leak or to judge stale. A waiter that finds every slot taken
// connects to each; a holder's release closes its connections, which wakes
// the waiters to try again (and a fallback timer, if a wake-up is missed).
import { createServer, connect, type Server, type Socket } from "node:net";
import { availableParallelism } from "node:os";

/** What the sandbox keeps while it holds a slot. */
export interface StartSlot {
  readonly index: number;
  /** How long the acquire waited (ms). */
  readonly waitedMs: number;
  /** Frees the slot (idempotent). */
  release(): void;
  /**
   * Frees the slot `ms` from now unless release() or another expireIn()
   * comes first; never later than the hold limit (Infinity: at the limit).
   */
  expireIn(ms: number): void;
}

export interface StartSlotOptions {
  /** Abstract socket name prefix (tests use their own). */
  namePrefix?: string;
  /** A holder that has not released after this long loses the slot (a stuck start must not block the host). */
  holdMaxMs?: number;
  /** After waiting this long, start without a slot (and say so) rather than never. */
  waitMaxMs?: number;
  /** A waiter retries at least this often, even without a wake-up. */
  retryMs?: number;
}

const DEFAULT_SLOT_PREFIX = "hako/start-slot";

/** Slot i's abstract socket address (the leading NUL makes it abstract). */
export const startSlotAddress = (i: number, prefix = DEFAULT_SLOT_PREFIX): string => `\0${prefix}/${i}`;

/**
 * `[runtime] start_concurrency`: 0 → one per host CPU; -1 → no limit
 * (undefined); N → N.
 */
export function startSlotLimit(configured: number, cpus: number = availableParallelism()): number | undefined {
  if (configured < 0) return undefined;
  return configured === 0 ? Math.max(1, cpus) : configured;
}

export class StartSlots {
  private readonly prefix: string;
  private readonly holdMaxMs: number;
  private readonly waitMaxMs: number;
  private readonly retryMs: number;

  constructor(
    readonly limit: number,
    opts: StartSlotOptions = {},
  ) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`start slot limit must be a positive integer, got ${limit}`);
    this.prefix = opts.namePrefix ?? DEFAULT_SLOT_PREFIX;
    this.holdMaxMs = opts.holdMaxMs ?? 30_000;
    this.waitMaxMs = opts.waitMaxMs ?? 300_000;
    this.retryMs = opts.retryMs ?? 1_000;
  }

  private address(i: number): string {
    return startSlotAddress(i, this.prefix);
  }

  /**
   * Takes a free slot, waiting for one if all are held. Resolves undefined
   * (start anyway) after waitMaxMs; rejects if `signal` aborts.
   */
  async acquire(signal?: AbortSignal): Promise<StartSlot | undefined> {
    const t0 = performance.now();
    // Start at a random slot: waiters do not all pile onto slot 0.
    const offset = Math.floor(Math.random() * this.limit);
    for (;;) {
      signal?.throwIfAborted();
      for (let k = 0; k < this.limit; k++) {
        const i = (offset + k) % this.limit;
        const server = await this.tryBind(i);
        if (server) return this.hold(i, server, performance.now() - t0);
      }
      const left = this.waitMaxMs - (performance.now() - t0);
      if (left <= 0) return undefined;
      await this.waitForRelease(Math.min(this.retryMs, left), signal);
    }
  }

  /** Listens on slot i; undefined if another process holds it. */
  private tryBind(i: number): Promise<Server | undefined> {
    return new Promise((resolve) => {
      const server = createServer({ pauseOnConnect: true });
      server.once("error", () => resolve(undefined));
      server.listen(this.address(i), () => {
        server.removeAllListeners("error");
        server.on("error", () => undefined);
        server.unref();
        resolve(server);
      });
    });
  }

  private hold(index: number, server: Server, waitedMs: number): StartSlot {
    const waiters = new Set<Socket>();
    server.on("connection", (s) => {
      s.on("error", () => undefined);
      s.unref(); // a waiter's connection does not keep the holder alive
      waiters.add(s);
      s.once("close", () => waiters.delete(s));
    });
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      clearTimeout(timer);
      server.close();
      for (const s of waiters) s.destroy();
    };
    const holdDeadline = performance.now() + this.holdMaxMs;
    let timer: NodeJS.Timeout | undefined;
    const expireIn = (ms: number): void => {
      if (released) return;
      clearTimeout(timer);
      timer = setTimeout(release, Math.max(0, Math.min(ms, holdDeadline - performance.now())));
      timer.unref();
    };
    expireIn(Infinity);
    return { index, waitedMs, release, expireIn };
  }

  /**
   * Resolves when any slot's holder lets go (the waiter's connection to it
   * closes), a slot is free already (its connect is refused), or after `ms`.
   */
  private waitForRelease(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const socks: Socket[] = [];
      let settled = false;
      /** True for the first event only: the closes that destroying the other sockets causes find it settled. */
      const settle = (): boolean => {
        if (settled) return false;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        for (const s of socks) s.destroy();
        return true;
      };
      const done = (): void => {
        if (settle()) resolve();
      };
      const onAbort = (): void => {
        if (settle()) reject(signal!.reason);
      };
      const timer = setTimeout(done, ms);
      signal?.addEventListener("abort", onAbort, { once: true });
      for (let i = 0; i < this.limit; i++) {
        const sock = connect(this.address(i));
        socks.push(sock);
        sock.once("error", done); // refused: nobody holds it now
        sock.once("close", done);
      }
    });
  }
}

const shared = new Map<number, StartSlots>();

/** The process's StartSlots for a configured start_concurrency (undefined: no limit). */
export function startSlotsFor(configured: number): StartSlots | undefined {
  const limit = startSlotLimit(configured);
  if (limit === undefined) return undefined;
  let s = shared.get(limit);
  if (!s) shared.set(limit, (s = new StartSlots(limit)));
  return s;
}
