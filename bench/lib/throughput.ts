// The "io" section: data throughput of a hako pod against a runc pod, through
// the same CRI harness as the cri section (withCriContainerd in cri.ts) but on
// a CNI network of its own (bridge hakoio0), so that it cannot meet another
// benchmark's or the tests' pods.
//
// One pod per runtime, started once; each has one busybox container with a
// hostPath volume (for hako the shim bind-mounts it into the share that QEMU
// exports over virtio-9p; for runc it is a plain bind mount, i.e. the host's
// own file system: the baseline). Per iteration, hako then runc:
//
// 1. 9p write: `dd if=/dev/zero of=/io/… bs=1M count=N conv=fsync`;
// 2. 9p read: `dd if=/io/… of=/dev/null bs=1M` of a file the benchmark wrote
//    on the host just before, under a name the guest has never seen, so the
//    guest's page cache cannot hold it (the container may not write
//    /proc/sys/vm/drop_caches). Both runtimes read it from the host's page
//    cache: the difference is the path to it, which is what is measured;
// 3. network, pod → host, to a TCP listener of this process on the bridge's
//    gateway address, which times first → last byte. hako: veth → tc mirred →
//    tap → QEMU virtio-net; runc: the veth alone. Two senders:
//    a. `wget --post-file` of a file on the volume (busybox reads it into
//       memory, then writes the request body in one write(2)): what the path
//       carries;
//    b. `dd if=/dev/zero bs=1M | nc`: busybox nc copies 1 KiB per
//       read/poll/write, so under TCG this measures the guest's syscall cost
//       more than the network (the listener answers neither: it counts).
//
// dd is timed inside the container with busybox ash's $EPOCHREALTIME (a
// shell variable: no process is forked to read the clock), so the ExecSync
// set-up (for hako: a process spawned in the guest under TCG) is not part of
// the figure, and an empty dd run just before, timed alike, is subtracted:
// spawning dd costs ~1 ms on the host but tens of ms under TCG, as much as
// the copy itself for a read. The ExecSync wall time is kept in the samples
// as a cross-check.
import { mkdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import type { CniNetwork } from "../../test/helpers/cri-containerd.js";
import { IO_HANDLERS, removePod, startPod, withCriContainerd, type CriCtx, type IoHandler, type StartedPod } from "./cri.js";
import type { KernelEnv } from "./env.js";

/** Not the cri section's hakobench0 (10.218.0.0/24) nor the tests' hakotest0 (10.217.0.0/24). */
export const IO_NETWORK: CniNetwork = { name: "hako-bench-io", bridge: "hakoio0", subnet: "10.219.0.0/24", gateway: "10.219.0.1" };
/** Size of the file written and read over the volume. */
export const FILE_MIB = 64;
/** Bytes sent over TCP per run by wget. */
export const NET_MIB = 64;
/** Bytes sent per run by nc: less, since it moves ~4 MB/s under TCG. */
export const NC_MIB = 32;
const MIB = 1 << 20;
/** Where the hostPath volume is mounted in the container. */
const VOLUME = "/io";
/** wget's request body, written by the host into each volume once. */
const POST_FILE = "post.bin";
/** Upper bound of one dd or nc in the container (9p under TCG is slow, but not that slow). */
const EXEC_TIMEOUT_S = 300;
/** The listener gives up on a transfer whose connection never came or never ended. */
const TRANSFER_TIMEOUT_MS = EXEC_TIMEOUT_S * 1000;

/** One timed transfer. */
export interface Transfer {
  bytes: number;
  /** The figure's interval: dd in the container minus spawnMs, or first → last byte at the host's listener. */
  ms: number;
  /** dd only: an empty dd's time in the container, subtracted from `ms`. */
  spawnMs: number;
  /** The ExecSync call's host wall time (exec set-up included). */
  execMs: number;
}

export interface IoRun {
  write: Transfer;
  read: Transfer;
  /** wget --post-file. */
  net: Transfer;
  /** dd | nc. */
  nc: Transfer;
}

export type IoKind = keyof IoRun;
export const IO_KINDS: readonly IoKind[] = ["write", "read", "net", "nc"];

export interface IoSamples {
  containerdVersion: string;
  kernel: string;
  accel: string;
  network: string;
  fileMiB: number;
  netMiB: number;
  ncMiB: number;
  /** The host dirs behind the volumes (in the benchmark's temp dir). */
  hostDirs: Record<IoHandler, string>;
  /** The volume's file system type in the container (/proc/mounts): 9p for hako. */
  volumeFs: Record<IoHandler, string>;
  /** The pods' start (RunPodSandbox → container running), once per runtime; not a figure of this section. */
  podStartMs: Record<IoHandler, number>;
  runs: Record<IoHandler, IoRun[]>;
}

export interface IoSectionOptions {
  runs: number;
  warmup: number;
  /** Parent of the volumes' host dirs and the pods' log dirs (removed with the benchmark's temp dir). */
  workDir: string;
}

interface ExecResult {
  stdout: string;
  stderr: string;
  execMs: number;
}

/** `sh -c script` in the pod's container; rejects unless it exits 0. */
async function shell(ctx: CriCtx, pod: StartedPod, script: string): Promise<ExecResult> {
  const t0 = performance.now();
  const r = await ctx.cri.execSync(pod.containerId, ["sh", "-c", script], { timeoutSeconds: EXEC_TIMEOUT_S });
  const execMs = performance.now() - t0;
  const stdout = Buffer.from(r.stdout).toString();
  const stderr = Buffer.from(r.stderr).toString();
  if (r.exitCode !== 0) throw new Error(`${pod.handler} pod: \`${script}\` exited ${r.exitCode}: ${stderr.trim().slice(-300)}`);
  return { stdout, stderr, execMs };
}

/**
 * Wraps the dd `cmd` so that its last output line is "<t0> <t1> <t2>"
 * (epoch seconds with µs from $EPOCHREALTIME): t0 → t1 an empty dd, t1 → t2
 * `cmd`.
 */
function timed(cmd: string): string {
  return `a=$EPOCHREALTIME; dd if=/dev/zero of=/dev/null count=0 2>/dev/null; b=$EPOCHREALTIME; ${cmd} || exit 1; c=$EPOCHREALTIME; echo "$a $b $c"`;
}

/** From what `timed` printed: the empty dd's ms, and the dd's ms minus it. */
function elapsed(stdout: string): { ms: number; spawnMs: number } {
  const m = /(\d+\.\d+) (\d+\.\d+) (\d+\.\d+)\s*$/.exec(stdout);
  if (!m) throw new Error(`no "<t0> <t1> <t2>" stamps in ${JSON.stringify(stdout.slice(-200))} (has the shell no $EPOCHREALTIME?)`);
  const [t0, t1, t2] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const spawnMs = (t1 - t0) * 1000;
  return { ms: (t2 - t1) * 1000 - spawnMs, spawnMs };
}

/** dd's "N+0 records in" must say it moved all `count` blocks. */
function checkRecords(stderr: string, count: number, what: string): void {
  if (!new RegExp(`^${count}\\+0 records in$`, "m").test(stderr)) throw new Error(`${what}: dd did not move ${count} blocks: ${JSON.stringify(stderr.slice(-200))}`);
}

/** The write: dd with conv=fsync into the volume; the file must then have its full size on the host. */
async function measureWrite(ctx: CriCtx, pod: StartedPod, hostDir: string, name: string): Promise<Transfer> {
  const r = await shell(ctx, pod, timed(`dd if=/dev/zero of=${VOLUME}/${name} bs=1M count=${FILE_MIB} conv=fsync`));
  checkRecords(r.stderr, FILE_MIB, `${pod.handler} write`);
  const size = statSync(join(hostDir, name)).size;
  if (size !== FILE_MIB * MIB) throw new Error(`${pod.handler} write: ${name} has ${size} bytes on the host, not ${FILE_MIB * MIB}`);
  return { bytes: size, ...elapsed(r.stdout), execMs: r.execMs };
}

/** The read: a file the host wrote just now (new name: never in the guest's page cache), dd'd to /dev/null. */
async function measureRead(ctx: CriCtx, pod: StartedPod, hostDir: string, name: string, content: Buffer): Promise<Transfer> {
  writeFileSync(join(hostDir, name), content);
  const r = await shell(ctx, pod, timed(`dd if=${VOLUME}/${name} of=/dev/null bs=1M`));
  checkRecords(r.stderr, FILE_MIB, `${pod.handler} read`);
  return { bytes: content.length, ...elapsed(r.stdout), execMs: r.execMs };
}

type Received = Pick<Transfer, "bytes" | "ms">;

/**
 * A TCP listener that takes one expected connection at a time and times
 * first → last byte. "raw": counts every byte until the peer ends (our side
 * then ends too, allowHalfOpen being off, which lets busybox nc exit).
 * "http": one POST; counts the body, answers 200 once Content-Length bytes
 * came (wget waits for the answer). Connections nobody waits for are dropped.
 */
class Sink {
  private waiter: { mode: "raw" | "http"; resolve: (t: Received) => void; reject: (e: Error) => void } | undefined;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {
    server.on("connection", (sock) => this.accept(sock));
  }

  static open(host: string): Promise<Sink> {
    return new Promise((resolve, reject) => {
      const server = createServer();
      server.once("error", reject);
      server.listen(0, host, () => {
        const addr = server.address();
        if (addr === null || typeof addr === "string") reject(new Error(`listener on ${host}: no port`));
        else resolve(new Sink(server, addr.port));
      });
    });
  }

  /** The next connection's transfer. */
  next(mode: "raw" | "http"): Promise<Received> {
    if (this.waiter) throw new Error("Sink: a transfer is already awaited");
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Error(`no complete transfer after ${TRANSFER_TIMEOUT_MS} ms`)), TRANSFER_TIMEOUT_MS);
      const settle = <A>(f: (a: A) => void) => (a: A): void => {
        clearTimeout(timer);
        this.waiter = undefined;
        f(a);
      };
      this.waiter = { mode, resolve: settle(resolve), reject: settle(reject) };
    });
  }

  /** Gives up on the awaited transfer (e.g. the sender failed). */
  fail(err: Error): void {
    this.waiter?.reject(err);
  }

  private accept(sock: Socket): void {
    const w = this.waiter;
    if (!w) {
      sock.destroy();
      return;
    }
    let first = 0;
    let last = 0;
    let bytes = 0;
    // http: the head until its blank line, then the body's expected length.
    let head = "";
    let bodyLength = -1;
    sock.on("data", (chunk: Buffer) => {
      last = performance.now();
      if (first === 0) first = last;
      if (w.mode === "raw" || bodyLength >= 0) bytes += chunk.length;
      else {
        head += chunk.toString("latin1");
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) return;
        const len = /^content-length:\s*(\d+)\s*$/im.exec(head.slice(0, end));
        if (!len) {
          sock.destroy();
          w.reject(new Error(`POST without Content-Length: ${JSON.stringify(head.slice(0, 200))}`));
          return;
        }
        bodyLength = Number(len[1]);
        bytes = head.length - end - 4;
      }
      if (bodyLength >= 0 && bytes >= bodyLength) {
        sock.end("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        w.resolve({ bytes, ms: last - first });
      }
    });
    sock.on("end", () => {
      if (w.mode === "raw") w.resolve({ bytes, ms: last - first });
    });
    sock.on("error", (e) => w.reject(e));
  }

  close(): Promise<void> {
    this.fail(new Error("listener closed"));
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** Runs the sender `script` in the pod while the sink awaits `bytes` bytes. */
async function measureSend(ctx: CriCtx, pod: StartedPod, sink: Sink, mode: "raw" | "http", script: string, bytes: number): Promise<Transfer> {
  const got = sink.next(mode);
  // Observed here at once, so that a failure before the await below is no unhandled rejection.
  got.catch(() => undefined);
  let execMs: number;
  try {
    execMs = (await shell(ctx, pod, script)).execMs;
  } catch (err) {
    sink.fail(err as Error);
    throw err;
  }
  const t = await got;
  if (t.bytes !== bytes) throw new Error(`${pod.handler} ${mode}: the listener got ${t.bytes} bytes, not ${bytes}`);
  return { ...t, spawnMs: 0, execMs };
}

/** wget POSTs the file `name` of the volume (the host wrote it: wget takes it for a C string, so no NUL bytes). */
function measureWget(ctx: CriCtx, pod: StartedPod, sink: Sink, name: string): Promise<Transfer> {
  const url = `http://${IO_NETWORK.gateway}:${sink.port}/`;
  return measureSend(ctx, pod, sink, "http", `wget -q -O /dev/null --post-file ${VOLUME}/${name} ${url}`, NET_MIB * MIB);
}

function measureNc(ctx: CriCtx, pod: StartedPod, sink: Sink): Promise<Transfer> {
  return measureSend(ctx, pod, sink, "raw", `dd if=/dev/zero bs=1M count=${NC_MIB} 2>/dev/null | nc ${IO_NETWORK.gateway} ${sink.port}`, NC_MIB * MIB);
}

/** MB/s (10^6 bytes per second) of one transfer. */
export function mbPerS(t: Transfer): number {
  return t.bytes / (t.ms * 1000);
}

function describe(name: string, t: Transfer): string {
  const spawn = t.spawnMs > 0 ? ` + dd spawn ${t.spawnMs.toFixed(0)}` : "";
  return `${name} ${mbPerS(t).toFixed(1)} MB/s (${t.ms.toFixed(0)} ms${spawn}, exec ${t.execMs.toFixed(0)})`;
}

/** Starts the pod with its volume and finds the volume's file system type in the container. */
async function startVolumePod(ctx: CriCtx, h: IoHandler, hostDir: string): Promise<{ pod: StartedPod; startMs: number; fs: string }> {
  mkdirSync(hostDir, { recursive: true });
  const { pod, sample } = await startPod(ctx, h, `${ctx.prefix}-${h}`, [{ containerPath: VOLUME, hostPath: hostDir, readonly: false }]);
  const fs = (await shell(ctx, pod, `awk '$2 == "${VOLUME}" { t = $3 } END { print t }' /proc/mounts`)).stdout.trim();
  return { pod, startMs: sample.totalMs, fs };
}

/** Runs the section; `log` gets one line per iteration and runtime. */
export async function runIoSection(k: KernelEnv, o: IoSectionOptions, log: (s: string) => void, stop: () => boolean): Promise<IoSamples> {
  return withCriContainerd(k, IO_NETWORK, "io", o.workDir, log, async (ctx, v) => {
    const hostDirs = { hako: join(o.workDir, "io-hako"), runc: join(o.workDir, "io-runc") };
    const s: IoSamples = {
      containerdVersion: v.version,
      kernel: k.kernel,
      accel: k.probe.accel,
      network: `${IO_NETWORK.bridge} ${IO_NETWORK.subnet}`,
      fileMiB: FILE_MIB,
      netMiB: NET_MIB,
      ncMiB: NC_MIB,
      hostDirs,
      volumeFs: { hako: "", runc: "" },
      podStartMs: { hako: NaN, runc: NaN },
      runs: { hako: [], runc: [] },
    };
    // One buffer for the read files and wget's body: the content does not matter (but for NUL, see measureWget), the size does.
    const content = Buffer.alloc(Math.max(FILE_MIB, NET_MIB) * MIB, 0x5a);
    // Narrowed to the io section's handlers, which key its records.
    const pods: Array<StartedPod & { handler: IoHandler }> = [];
    let sink: Sink | undefined;
    try {
      for (const h of IO_HANDLERS) {
        const { pod, startMs, fs } = await startVolumePod(ctx, h, hostDirs[h]);
        pods.push({ ...pod, handler: h });
        s.podStartMs[h] = startMs;
        s.volumeFs[h] = fs;
        writeFileSync(join(hostDirs[h], POST_FILE), content.subarray(0, NET_MIB * MIB));
        log(`bench: io: ${h} pod ${pod.podId.slice(0, 12)} running after ${startMs.toFixed(0)} ms, volume ${hostDirs[h]} at ${VOLUME} (${fs || "not in /proc/mounts"})`);
      }
      // The gateway address exists once CNI made the bridge, i.e. after the first pod.
      sink = await Sink.open(IO_NETWORK.gateway);
      log(
        `bench: io: ${o.runs} runs + ${o.warmup} warm-up, alternating ${IO_HANDLERS.join(" and ")}: dd ${FILE_MIB} MiB write (conv=fsync) + read over the volume, ` +
          `TCP to ${IO_NETWORK.gateway}:${sink.port}: wget POST ${NET_MIB} MiB, dd | nc ${NC_MIB} MiB`,
      );
      for (let i = -o.warmup; i < o.runs && !stop(); i++) {
        const tag = i < 0 ? `warm-up ${i + o.warmup + 1}/${o.warmup}` : `run ${i + 1}/${o.runs}`;
        for (const pod of pods) {
          if (stop()) break;
          const dir = hostDirs[pod.handler];
          const seq = i + o.warmup;
          const write = await measureWrite(ctx, pod, dir, `w-${seq}.bin`);
          const read = await measureRead(ctx, pod, dir, `r-${seq}.bin`, content.subarray(0, FILE_MIB * MIB));
          // The files go at once: 2 × 64 MiB per run would pile up in the temp dir.
          for (const f of [`w-${seq}.bin`, `r-${seq}.bin`]) rmSync(join(dir, f), { force: true });
          const net = await measureWget(ctx, pod, sink, POST_FILE);
          const nc = await measureNc(ctx, pod, sink);
          log(`bench: io ${tag}: ${pod.handler}: ${[describe("write", write), describe("read", read), describe("wget", net), describe("nc", nc)].join(", ")}`);
          if (i >= 0) s.runs[pod.handler].push({ write, read, net, nc });
        }
      }
      return s;
    } finally {
      await sink?.close();
      const failures: string[] = [];
      for (const pod of pods) await removePod(ctx, pod.podId).catch((e: Error) => failures.push(e.message));
      if (failures.length > 0) log(`bench: io: removing the pods: ${failures.join("; ")}`);
    }
  });
}
