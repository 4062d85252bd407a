// `make bench`: boot-time and memory figures of hako against bare QEMU, for
// the generic (Debian) and the minimal guest kernel ("boot" section), and
// `ctr run` through containerd-shim-hako-v2 against runc ("containerd"
// section, generic kernel), and Kubernetes pods through containerd's CRI with
// hako (cold and cloned from a VM template) against runc: pod start and host
// memory per idle pod ("cri" section, generic kernel), the throughput of a hako pod's hostPath volume (9p)
// and of its network to the host against a runc pod's ("io" section, generic
// kernel), and N templated pods requested at once: time until all run and
// host memory ("density" section). See docs/benchmarks.md.
//
//   node --import tsx bench/run.ts [--runs N] [--quick] [--warmup N]
//        [--kernels generic,minimal] [--accel auto|tcg|kvm] [--state-dir DIR]
//        [--sections boot,containerd,cri,io,density] [--pods N]
//        [--density-pods N] [--density-parallel P]
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import type { Accel } from "../src/runtime/config.js";
import { CONTAINERD_TMP_PREFIX } from "../test/helpers/containerd.js";
import { chartSvgFromResults } from "./lib/chart.js";
import { killAll } from "./lib/children.js";
import { containerdBaseline, containerdLeaks, runContainerdSection } from "./lib/containerd.js";
import { criLeaks, runCriSection } from "./lib/cri.js";
import { criJson, criTables, summarizeCri } from "./lib/cri-report.js";
import { densityTable, runDensitySection, summarizeDensity } from "./lib/density.js";
import { runIoSection } from "./lib/throughput.js";
import { ioJson, ioTable, summarizeIo } from "./lib/throughput-report.js";
import { KERNELS, setupEnv, teardownEnv, type BenchEnv, type KernelEnv, type KernelName } from "./lib/env.js";
import { describeLeaks, findLeaks, hasLeaks, removeEmptyStateDir } from "./lib/leaks.js";
import { KSM_DIR, ksmAvailable, readKsmSettings } from "../src/resource/ksm.js";
import { KSM_JOURNAL, recoverKsm } from "./lib/ksm-journal.js";
import { measureCliStartup, measureFloor, measureHakoRun, measureSandbox, PRIME_MIB, primeHostMemory } from "./lib/measure.js";
import {
  comparisonTable,
  containerdTable,
  emptySamples,
  kernelTable,
  resultJson,
  summarizeContainerd,
  summarizeKernel,
  type KernelSamples,
} from "./lib/report.js";

const RESULTS_DIR = resolve(import.meta.dirname, "results");
const MIN_RUNS = 5;
const SECTIONS = ["boot", "containerd", "cri", "io", "density"] as const;
/** The containerd, cri and io sections run with this kernel only. */
const CONTAINERD_KERNEL: KernelName = "generic";
const DEFAULT_PODS = 10;
/** The density claim is about 100 pods; --density-pods lowers it while developing. */
const DEFAULT_DENSITY_PODS = 100;
/** Pod starts in flight in the density section (kubelet starts pods concurrently; more only queues on 2 cores). */
const DEFAULT_DENSITY_PARALLEL = 16;

const { values: opts } = parseArgs({
  options: {
    runs: { type: "string", default: String(MIN_RUNS) },
    quick: { type: "boolean", default: false },
    warmup: { type: "string", default: "1" },
    kernels: { type: "string", default: KERNELS.join(",") },
    accel: { type: "string", default: "auto" },
    "state-dir": { type: "string", default: "/run/hako-bench" },
    sections: { type: "string", default: SECTIONS.join(",") },
    pods: { type: "string", default: String(DEFAULT_PODS) },
    "density-pods": { type: "string", default: String(DEFAULT_DENSITY_PODS) },
    "density-parallel": { type: "string", default: String(DEFAULT_DENSITY_PARALLEL) },
    ksm: { type: "string", default: "on" },
    "start-concurrency": { type: "string", default: "" },
    help: { type: "boolean", short: "h", default: false },
  },
});

if (opts.help) {
  process.stdout.write(
    "usage: node --import tsx bench/run.ts [--runs N (≥5, default 5)] [--quick (N=5)] [--warmup N (default 1)]\n" +
      "       [--kernels generic,minimal] [--accel auto|tcg|kvm] [--state-dir /run/hako-bench]\n" +
      "       [--sections boot,containerd,cri,io] (boot: floor/hako run/sandbox per kernel; containerd: ctr run hako vs runc, generic kernel;\n" +
      "        cri: CRI pod start hako vs runc and host PSS of --pods N idle pods per runtime (default 10), generic kernel;\n" +
      "        with --ksm on (default, if the host has KSM) also after KSM settled over the idle hako pods, its settings put back after;\n" +
      "        density: --density-pods N (default 100) templated pods requested at once, --density-parallel P starts in flight (default " + DEFAULT_DENSITY_PARALLEL + "):\n" +
      "        time until all run, host memory, teardown, generic kernel;\n" +
      "        io: MB/s of dd write/read on a hostPath volume (9p for hako) and of TCP pod → host, hako pod vs runc pod, generic kernel)\n" +
      "       [--start-concurrency N] ([runtime] start_concurrency of the generated configs; default: hako's, 0 = one per CPU; -1 = no limit)\n",
  );
  process.exit(0);
}

function fail(msg: string): never {
  process.stderr.write(`bench: ${msg}\n`);
  process.exit(2);
}

const runs = opts.quick ? MIN_RUNS : Number(opts.runs);
if (!Number.isInteger(runs) || runs < MIN_RUNS) fail(`--runs must be an integer ≥ ${MIN_RUNS}`);
const warmup = Number(opts.warmup);
if (!Number.isInteger(warmup) || warmup < 0) fail("--warmup must be an integer ≥ 0");
const kernels = opts.kernels.split(",").filter((k) => k !== "") as KernelName[];
for (const k of kernels) if (!KERNELS.includes(k)) fail(`unknown kernel ${k} (known: ${KERNELS.join(", ")})`);
const sections = new Set(opts.sections.split(",").filter((x) => x !== ""));
for (const x of sections) if (!(SECTIONS as readonly string[]).includes(x)) fail(`unknown section ${x} (known: ${SECTIONS.join(", ")})`);
if (sections.size === 0) fail("--sections: nothing to run");
const doBoot = sections.has("boot");
const doContainerd = sections.has("containerd");
const doCri = sections.has("cri");
const doIo = sections.has("io");
const doDensity = sections.has("density");
const densityPods = Number(opts["density-pods"]);
if (!Number.isInteger(densityPods) || densityPods < 1) fail("--density-pods must be an integer ≥ 1");
const densityParallel = Number(opts["density-parallel"]);
if (!Number.isInteger(densityParallel) || densityParallel < 1) fail("--density-parallel must be an integer ≥ 1");
if (opts.ksm !== "on" && opts.ksm !== "off") fail("--ksm must be on or off");
const startConcurrency = opts["start-concurrency"] === "" ? undefined : Number(opts["start-concurrency"]);
if (startConcurrency !== undefined && (!Number.isInteger(startConcurrency) || startConcurrency < -1)) fail("--start-concurrency must be an integer ≥ -1");
const hostHasKsm = ksmAvailable();
/** The cri section also reads the idle pods' PSS with KSM settled: asked for, and the host has KSM. */
const ksm = opts.ksm === "on" && hostHasKsm;
const pods = Number(opts.pods);
if (!Number.isInteger(pods) || pods < 1) fail("--pods must be an integer ≥ 1");
// The environment (configs, probe) covers the boot section's kernels plus the generic one for containerd, cri and io.
const envKernels = KERNELS.filter((k) => (doBoot && kernels.includes(k)) || ((doContainerd || doCri || doIo || doDensity) && k === CONTAINERD_KERNEL));
if (envKernels.length === 0) fail("--kernels: nothing to run");
const accel = opts.accel as Accel;
if (!["auto", "tcg", "kvm"].includes(accel)) fail("--accel must be auto, tcg or kvm");
const stateDir = resolve(opts["state-dir"]);
if (existsSync(`${stateDir}/sandboxes`) && readdirSync(`${stateDir}/sandboxes`).length > 0) {
  fail(`${stateDir}/sandboxes is not empty: another benchmark running, or a leak from an earlier one`);
}

function qemuVersion(path: string): string {
  try {
    return execFileSync(path, ["--version"], { encoding: "utf8" }).split("\n")[0] ?? "";
  } catch {
    return "";
  }
}

function log(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

const t0 = performance.now();
const startedAt = new Date();
const loadBefore = loadavg();
// A run killed while ksmd ran at the cri section's pace left its journal: put the host's settings back first.
const recovered = hostHasKsm ? recoverKsm() : undefined;
if (recovered) log(`bench: KSM settings put back to ${JSON.stringify(recovered)} (left at the bench's pace by an interrupted run, ${KSM_JOURNAL})`);
/** The host's KSM settings: the cri section changes them for a while; the leak check wants them back. */
const ksmAtStart = hostHasKsm ? readKsmSettings() : undefined;
const ctrdBaseline = containerdBaseline(tmpdir(), CONTAINERD_TMP_PREFIX);
let env: BenchEnv | undefined;
let interrupted = false;

let cleaning: Promise<void> | undefined;
/** Once only: the signal handler and the main flow's `finally` await the same cleanup. */
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await killAll();
    if (env) teardownEnv(env);
    removeEmptyStateDir(stateDir);
  })();
  return cleaning;
}

for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    log(`bench: ${sig}: stopping, cleaning up`);
    // Killing the children makes the running measurement fail; the main flow then
    // awaits this same cleanup, runs the leak check and exits 130. The timer is a
    // last resort should it hang.
    void cleanup();
    setTimeout(() => process.exit(130), 120_000).unref();
  });
}

let exitCode = 0;
try {
  env = await setupEnv(envKernels, stateDir, accel, { startConcurrency });
  for (const k of env.kernels) log(`bench: kernel ${k.kernel}: accel ${k.probe.accel} (${k.probe.reason})`);
  const bootKernels = doBoot ? env.kernels.filter((k) => kernels.includes(k.kernel)) : [];
  log(`bench: sections: ${[...sections].join(", ")}`);
  if (doBoot) log(`bench: ${runs} runs + ${warmup} warm-up per kernel; each iteration: floor, hako run, in-process sandbox (each after ${PRIME_MIB} MiB of host memory were touched and freed), hako --version`);

  const samples = new Map<KernelName, KernelSamples>(bootKernels.map((k) => [k.kernel, emptySamples()]));
  let seq = 0;
  for (let i = -warmup; doBoot && i < runs && !interrupted; i++) {
    for (const k of bootKernels) {
      const tag = i < 0 ? `warm-up ${i + warmup + 1}/${warmup}` : `run ${i + 1}/${runs}`;
      const id = `bench-${process.pid}-${seq++}`;
      // Each VM starts right after the same priming (primeHostMemory: the host's free memory, not the order, decides).
      await primeHostMemory();
      const floor = await measureFloor(k);
      await primeHostMemory();
      const run = await measureHakoRun(k, env.bundleDir, `${id}-run`);
      await primeHostMemory();
      const sb = await measureSandbox(k, env.bundleDir, `${id}-sb`);
      const cli = await measureCliStartup();
      log(
        `bench: ${k.kernel} ${tag}: floor ${floor.markerMs.toFixed(0)} ms (exit ${floor.exitMs.toFixed(0)}), run ${run.toFixed(0)} ms, ` +
          `agent ready ${sb.spawnToAgentMs} ms, rss ${sb.rssMiB.toFixed(0)} MiB`,
      );
      if (i < 0) continue;
      const s = samples.get(k.kernel)!;
      s.floor.push(floor);
      s.run.push(run);
      s.sandbox.push(sb);
      s.cli.push(cli);
    }
  }
  if (interrupted) throw new Error("interrupted");
  const bootMs = performance.now() - t0;

  // The sections after boot all run on the containerd kernel, one after the other, each timed.
  const sectionKernel = env.kernels.find((x) => x.kernel === CONTAINERD_KERNEL);
  const runSection = async <T>(enabled: boolean, run: (k: KernelEnv) => Promise<T>): Promise<{ samples: T | undefined; ms: number }> => {
    if (!enabled || !sectionKernel) return { samples: undefined, ms: 0 };
    const tc = performance.now();
    const samples = await run(sectionKernel);
    if (interrupted) throw new Error("interrupted");
    return { samples, ms: performance.now() - tc };
  };
  const stopped = (): boolean => interrupted;
  const workDir = env.tmpDir;
  const { samples: ctrdSamples, ms: ctrdMs } = await runSection(doContainerd, (k) => runContainerdSection(k, stateDir, runs, warmup, log, stopped));
  const { samples: criSamples, ms: criMs } = await runSection(doCri, (k) => runCriSection(k, { runs, warmup, pods, workDir, ksm, bundleDir: env!.bundleDir }, log, stopped));
  const { samples: ioSamples, ms: ioMs } = await runSection(doIo, (k) => runIoSection(k, { runs, warmup, workDir }, log, stopped));
  const { samples: densitySamples, ms: densityMs } = await runSection(doDensity, (k) =>
    runDensitySection(k, { pods: densityPods, parallel: densityParallel, workDir }, log, stopped),
  );

  const results = bootKernels.map((k) => summarizeKernel(k, samples.get(k.kernel)!));
  const ctrd = ctrdSamples ? summarizeContainerd(ctrdSamples) : undefined;
  const bootReady = results.find((r) => r.kernel === CONTAINERD_KERNEL)?.target;
  const cri = criSamples ? summarizeCri(criSamples, bootReady) : undefined;
  const io = ioSamples ? summarizeIo(ioSamples) : undefined;
  const density = densitySamples ? summarizeDensity(densitySamples) : undefined;
  const durationMs = performance.now() - t0;
  const hakoRun = results.find((r) => r.kernel === CONTAINERD_KERNEL)?.summaries.run?.median;
  const out = [
    ...results.map(kernelTable),
    ...(results.length > 1 ? [comparisonTable(results)] : []),
    ...(ctrd ? [containerdTable(ctrd, hakoRun)] : []),
    ...(cri ? [criTables(cri)] : []),
    ...(io ? [ioTable(io)] : []),
    ...(density ? [densityTable(density)] : []),
  ].join("\n\n");
  const parts = [`setup + boot section ${(bootMs / 1000).toFixed(1)} s`];
  if (ctrd) parts.push(`containerd section ${(ctrdMs / 1000).toFixed(1)} s`);
  if (cri) parts.push(`cri section ${(criMs / 1000).toFixed(1)} s`);
  if (io) parts.push(`io section ${(ioMs / 1000).toFixed(1)} s`);
  if (density) parts.push(`density section ${(densityMs / 1000).toFixed(1)} s`);
  const split = parts.length > 1 ? ` (${parts.join(", ")})` : "";
  process.stdout.write(`\n${out}\n\nwhole benchmark: ${(durationMs / 1000).toFixed(1)} s${split}\n`);

  const meta = {
    startedAt: startedAt.toISOString(),
    durationMs: Math.round(durationMs),
    runs,
    warmup,
    sections: [...sections],
    sectionMs: { setupAndBoot: Math.round(bootMs), containerd: Math.round(ctrdMs), cri: Math.round(criMs), io: Math.round(ioMs), density: Math.round(densityMs) },
    ...(doCri ? { pods, ksm } : {}),
    startConcurrency: startConcurrency ?? "default",
    host: {
      cpu: cpus()[0]?.model ?? "",
      cpus: cpus().length,
      loadavgBefore: loadBefore,
      loadavgAfter: loadavg(),
      qemu: qemuVersion(env.kernels[0]!.config.hypervisor.qemu.path),
      node: process.version,
      kvmDevice: existsSync("/dev/kvm"),
    },
    stateDir,
  };
  mkdirSync(RESULTS_DIR, { recursive: true });
  const ignore = join(RESULTS_DIR, ".gitignore");
  if (!existsSync(ignore) || !readFileSync(ignore, "utf8").includes("!.gitignore")) writeFileSync(ignore, "*\n!.gitignore\n");
  const doc = JSON.stringify(resultJson(meta, results, ctrd, { ...(cri ? { cri: criJson(cri) } : {}), ...(io ? { io: ioJson(io) } : {}), ...(density && densitySamples ? { density: { summary: density, samples: densitySamples } } : {}) }), null, 2) + "\n";
  const file = join(RESULTS_DIR, `run-${startedAt.toISOString().replace(/[:.]/g, "-")}.json`);
  writeFileSync(file, doc);
  writeFileSync(join(RESULTS_DIR, "latest.json"), doc);
  process.stdout.write(`results: ${file} (and bench/results/latest.json)\n`);
  // Drawn from the JSON just written, not from the in-memory results, so that
  // `bench/chart.ts` re-rendering this file later gives the same picture.
  const svg = chartSvgFromResults(JSON.parse(doc));
  const svgFile = file.replace(/\.json$/, ".svg");
  writeFileSync(svgFile, svg);
  writeFileSync(join(RESULTS_DIR, "latest.svg"), svg);
  process.stdout.write(`chart: ${svgFile} (and bench/results/latest.svg)\n`);
} catch (err) {
  log(`bench: FAILED: ${(err as Error).message}`);
  exitCode = 1;
} finally {
  await cleanup();
  const cl = containerdLeaks(ctrdBaseline, tmpdir(), CONTAINERD_TMP_PREFIX);
  const crl = criLeaks();
  const leaks = findLeaks(stateDir, [...(env ? [env.tmpDir, env.bundleDir] : []), ...cl.paths, ...crl.paths], {
    shims: cl.shims,
    containerProcesses: crl.processes,
    qemuNames: crl.qemuNames,
  });
  const ksmNow = ksmAtStart ? readKsmSettings() : undefined;
  if (ksmAtStart && ksmNow && JSON.stringify(ksmNow) !== JSON.stringify(ksmAtStart)) leaks.paths.push(`${KSM_DIR}: ${JSON.stringify(ksmNow)}, was ${JSON.stringify(ksmAtStart)}`);
  if (hasLeaks(leaks)) {
    log(`bench: LEAKED after the benchmark:\n  ${describeLeaks(leaks)}`);
    exitCode = 3;
  } else {
    log(`bench: leak check: no QEMU, shim, sandbox, mount, containerd dir${doCri || doIo ? ", pod netns, CNI cache entry, bridge" : ""} or temp dir left behind`);
  }
}
process.exit(interrupted && exitCode !== 3 ? 130 : exitCode);
