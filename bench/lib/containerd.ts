// The "containerd" section: one private containerd 1.6 (test/helpers/containerd.ts),
// `ctr run --rm … /bin/true` with the hako shim and with runc, alternated, then
// the memory of the hako shim (and of its QEMU) while one container runs.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync, rmSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { importBusybox, startContainerd, type Containerd } from "../../test/helpers/containerd.js";
import { commandLine, isSpareShim, processTable } from "../../test/helpers/processes.js";
import { shimSocketAddress, socketPathOf } from "../../src/shim/address.js";
import { stopAfterWindDown, track, untrack } from "./children.js";
import type { KernelEnv } from "./env.js";
import { smapsRollup } from "./measure.js";
import { HAKO } from "../../test/helpers/hako.js";

export const HAKO_RUNTIME = "io.containerd.hako.v2";
export const RUNC_RUNTIME = "io.containerd.runc.v2";
/** Our own namespace: runc keeps state in the shared /run/containerd/runc/<namespace>. */
export const NAMESPACE = "hako-bench";
const RUN_TIMEOUT_MS = 120_000;
/** On interruption the section finishes its current `ctr run` (a shim killed mid-create leaves state) for at most this long. */
const WIND_DOWN_MS = 60_000;

/** What the section made, for the final leak check (filled as it goes). */
export const made = { dirs: [] as string[], addresses: [] as string[], shimSockets: [] as string[] };

export interface MemSample {
  /** ctr run -d → `ctr task ls` shows RUNNING. */
  startMs: number;
  shimPid: number;
  shimRssMiB: number;
  shimPssMiB: number;
  qemuPid: number;
  qemuRssMiB: number;
  qemuPssMiB: number;
}

export interface RuncMemSample {
  shimPid: number;
  shimRssMiB: number;
  shimPssMiB: number;
}

export interface ContainerdSamples {
  containerdVersion: string;
  kernel: string;
  accel: string;
  /** Wall time of `ctr run --rm --runtime R image id /bin/true`, spawn → exit 0, ms. */
  hako: number[];
  runc: number[];
  mem?: MemSample;
  runcMem?: RuncMemSample;
}


/** `ctr …` against `c`, spawn → exit, tracked for interruption; rejects on a non-zero exit. */
function timeCtr(c: Containerd, args: string[]): Promise<{ ms: number; out: string }> {
  return new Promise((resolvePromise, reject) => {
    const t0 = performance.now();
    const child = spawn("ctr", ["--address", c.address, "--namespace", c.namespace, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    track(child.pid, "ctr");
    let out = "";
    child.stdout.on("data", (b: Buffer) => (out = (out + b.toString()).slice(-4096)));
    child.stderr.on("data", (b: Buffer) => (out = (out + b.toString()).slice(-4096)));
    const timer = setTimeout(() => child.kill("SIGKILL"), RUN_TIMEOUT_MS);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ctr: ${e.message}`));
    });
    child.on("close", (code, signal) => {
      const ms = performance.now() - t0;
      clearTimeout(timer);
      untrack(child.pid);
      if (code === 0) resolvePromise({ ms, out });
      else reject(new Error(`ctr ${args.join(" ")} exited with ${signal ?? code} after ${Math.round(ms)} ms: ${out.trim().slice(-600)}`));
    });
  });
}

async function ctrOk(c: Containerd, args: string[]): Promise<string> {
  const r = await c.ctr(args, { timeoutMs: RUN_TIMEOUT_MS });
  if (r.status !== 0) throw new Error(`ctr ${args.join(" ")} failed (${r.status}): ${r.stderr.trim()}`);
  return r.stdout.toString();
}

async function waitFor<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function taskStatus(c: Containerd, id: string): Promise<string> {
  return ctrOk(c, ["task", "ls"]).then((out) => out.split("\n").find((l) => l.startsWith(`${id} `))?.trim().split(/\s+/)[2] ?? "");
}

/** Shim processes serving `c` whose command line names `binary` (containerd-shim-hako-v2 / -runc-v2); a spare waiting for the next task is none. */
function shimPids(c: Containerd, binary: string): number[] {
  return processTable()
    .filter((p) => p.argv.includes(c.address) && p.argv.some((a) => a.includes(binary)) && !isSpareShim(p))
    .map((p) => p.pid);
}

/** Kills, deletes and forgets a detached task, then waits for its shim to go. */
async function removeTask(c: Containerd, id: string, binary: string): Promise<void> {
  await c.ctr(["task", "kill", "-s", "KILL", id]);
  await waitFor(`task ${id} to stop`, async () => ((await taskStatus(c, id)) !== "RUNNING" ? true : undefined), 30_000).catch(() => undefined);
  await c.ctr(["task", "delete", "-f", id]);
  await c.ctr(["container", "delete", id]);
  await waitFor(`the ${binary} of ${id} to exit`, () => (shimPids(c, binary).length === 0 ? true : undefined), 30_000);
}

const mib = (kb: number): number => kb / 1024;

/**
 * Last resort after containerd stopped: sandboxes of ours still in the state dir
 * (a shim killed mid-create) go through `hako delete --force`; shim sockets of
 * ours that no live shim serves are removed.
 */
function sweep(k: KernelEnv, stateDir: string, log: (s: string) => void): void {
  const sbDir = `${stateDir}/sandboxes`;
  const ours = existsSync(sbDir) ? readdirSync(sbDir).filter((n) => n.startsWith(`bench-${process.pid}-`)) : [];
  for (const id of ours) {
    log(`bench: containerd: sandbox ${id} left by its shim: hako delete --force`);
    spawnSync(HAKO, ["--config", k.configFile, "delete", "--force", id], { stdio: "ignore", timeout: 60_000 });
  }
  const served = new Set(allShims().flatMap((p) => p.argv));
  for (const sock of made.shimSockets) {
    if (existsSync(sock) && !served.has(sock) && !served.has(`unix://${sock}`)) rmSync(sock, { force: true });
  }
}

/** Runs the section; `log` gets one line per sample. */
export async function runContainerdSection(
  k: KernelEnv,
  stateDir: string,
  runs: number,
  warmup: number,
  log: (s: string) => void,
  stop: () => boolean,
): Promise<ContainerdSamples> {
  const c = await startContainerd({ namespace: NAMESPACE, env: { HAKO_CONFIG: k.configFile } });
  made.dirs.push(c.dir);
  made.addresses.push(c.address);
  const pid = c.pid();
  track(pid, "containerd");
  // c.stop() returns at once when a stop is under way: share one promise so that
  // both the interruption and the finally below wait for the whole teardown.
  let stopping: Promise<void> | undefined;
  const stopOnce = (): Promise<void> => (stopping ??= c.stop().finally(() => sweep(k, stateDir, log)));
  // On interruption: let the section notice stop() and wind down (bounded), then stop containerd.
  const sectionOver = stopAfterWindDown(stopOnce, WIND_DOWN_MS);
  const shimSocket = (id: string): void => void made.shimSockets.push(socketPathOf(shimSocketAddress(c.address, NAMESPACE, id)));
  try {
    const image = await importBusybox(c);
    const version = (await ctrOk(c, ["version"])).match(/Server:[\s\S]*?Version:\s+(\S+)/)?.[1] ?? "";
    const s: ContainerdSamples = { containerdVersion: version, kernel: k.kernel, accel: k.probe.accel, hako: [], runc: [] };
    log(`bench: containerd ${version} (pid ${c.pid()}, ${c.dir}), namespace ${NAMESPACE}, hako config ${k.configFile}`);
    log(`bench: containerd: ${runs} runs + ${warmup} warm-up, alternating ${HAKO_RUNTIME} and ${RUNC_RUNTIME}`);

    for (let i = -warmup; i < runs && !stop(); i++) {
      const tag = i < 0 ? `warm-up ${i + warmup + 1}/${warmup}` : `run ${i + 1}/${runs}`;
      const line: string[] = [];
      for (const [name, runtime] of [["hako", HAKO_RUNTIME], ["runc", RUNC_RUNTIME]] as const) {
        const id = `bench-${process.pid}-${name}-${i + warmup}`;
        shimSocket(id);
        const { ms } = await timeCtr(c, ["run", "--rm", "--runtime", runtime, image, id, "/bin/true"]);
        line.push(`${name} ${ms.toFixed(0)} ms`);
        if (i >= 0) s[name].push(ms);
      }
      log(`bench: containerd ${tag}: ctr run --rm /bin/true: ${line.join(", ")}`);
    }
    if (stop()) return s;

    // Memory of the hako shim and its QEMU while one container runs.
    const id = `bench-${process.pid}-hako-mem`;
    shimSocket(id);
    const t0 = performance.now();
    await timeCtr(c, ["run", "-d", "--runtime", HAKO_RUNTIME, image, id, "sleep", "600"]);
    try {
      await waitFor(`task ${id} RUNNING`, async () => ((await taskStatus(c, id)) === "RUNNING" ? true : undefined));
      const startMs = performance.now() - t0;
      const shims = shimPids(c, "containerd-shim-hako-v2");
      if (shims.length !== 1) throw new Error(`expected one hako shim serving ${c.address}, found ${shims.length}: ${shims.join(", ")}`);
      const shimPid = shims[0]!;
      const qemus = processTable()
        .filter((p) => (p.argv[0] ?? "").includes("qemu-system") && (p.ppid === shimPid || p.argv.some((a) => a.includes(stateDir))))
        .map((p) => p.pid);
      if (qemus.length !== 1) throw new Error(`expected one QEMU for ${id}, found ${qemus.length}: ${qemus.join(", ")}`);
      const qemuPid = qemus[0]!;
      track(qemuPid, "qemu (containerd)");
      const shimMem = smapsRollup(shimPid);
      const qemuMem = smapsRollup(qemuPid);
      s.mem = {
        startMs,
        shimPid,
        shimRssMiB: mib(shimMem.rssKb),
        shimPssMiB: mib(shimMem.pssKb),
        qemuPid,
        qemuRssMiB: mib(qemuMem.rssKb),
        qemuPssMiB: mib(qemuMem.pssKb),
      };
      log(
        `bench: containerd: hako task RUNNING after ${startMs.toFixed(0)} ms; shim ${shimPid} RSS ${s.mem.shimRssMiB.toFixed(1)} / PSS ${s.mem.shimPssMiB.toFixed(1)} MiB, ` +
          `QEMU ${qemuPid} RSS ${s.mem.qemuRssMiB.toFixed(1)} / PSS ${s.mem.qemuPssMiB.toFixed(1)} MiB`,
      );
    } finally {
      await removeTask(c, id, "containerd-shim-hako-v2");
      if (s.mem) untrack(s.mem.qemuPid);
    }

    if (stop()) return s;

    // The same for runc's shim (no VM), as a reference.
    const rid = `bench-${process.pid}-runc-mem`;
    shimSocket(rid);
    await timeCtr(c, ["run", "-d", "--runtime", RUNC_RUNTIME, image, rid, "sleep", "600"]);
    try {
      await waitFor(`task ${rid} RUNNING`, async () => ((await taskStatus(c, rid)) === "RUNNING" ? true : undefined));
      const shims = shimPids(c, "containerd-shim-runc-v2");
      if (shims.length !== 1) throw new Error(`expected one runc shim serving ${c.address}, found ${shims.length}`);
      const m = smapsRollup(shims[0]!);
      s.runcMem = { shimPid: shims[0]!, shimRssMiB: mib(m.rssKb), shimPssMiB: mib(m.pssKb) };
      log(`bench: containerd: runc shim ${shims[0]} RSS ${s.runcMem.shimRssMiB.toFixed(1)} / PSS ${s.runcMem.shimPssMiB.toFixed(1)} MiB`);
    } finally {
      await removeTask(c, rid, "containerd-shim-runc-v2");
    }
    return s;
  } finally {
    await stopOnce();
    untrack(pid);
    sectionOver();
  }
}

/** The hako-test-containerd-* dirs and containerd shims present now (before the benchmark). */
export function containerdBaseline(tmp: string, prefix: string): { dirs: Set<string>; shims: Set<number> } {
  const dirs = new Set(readdirSync(tmp).filter((n) => n.startsWith(prefix)).map((n) => `${tmp}/${n}`));
  return { dirs, shims: new Set(allShims().map((s) => s.pid)) };
}

function allShims(): Array<{ pid: number; argv: string[] }> {
  return processTable().filter((p) => p.argv.some((a) => /containerd-shim-(hako|runc)-v2/.test(a)));
}

/**
 * Leaks of the section: our containerd dirs, our shim sockets, shims serving
 * our containerd, and new hako-test-containerd-* dirs or shims that no live
 * containerd uses (dirs/shims that existed before, or belong to a running
 * containerd such as a concurrent test run, are not ours).
 */
export function containerdLeaks(baseline: { dirs: Set<string>; shims: Set<number> }, tmp: string, prefix: string): { paths: string[]; shims: string[] } {
  const liveCmds = processTable().map(commandLine);
  const strays = readdirSync(tmp)
    .filter((n) => n.startsWith(prefix))
    .map((n) => `${tmp}/${n}`)
    .filter((d) => made.dirs.includes(d) || (!baseline.dirs.has(d) && !liveCmds.some((cmd) => cmd.startsWith("containerd ") && cmd.includes(d))));
  const paths = [...new Set([...made.dirs.filter((d) => existsSync(d)), ...made.shimSockets.filter((p) => existsSync(p)), ...strays])];
  const shims = allShims()
    .filter(({ pid, argv }) => {
      const at = argv.indexOf("-address");
      const addr = at >= 0 ? (argv[at + 1] ?? "") : "";
      return made.addresses.includes(addr) || (!baseline.shims.has(pid) && addr !== "" && !existsSync(addr));
    })
    .map(({ pid, argv }) => `${pid} ${argv.join(" ").slice(0, 160)}`);
  return { paths, shims };
}
