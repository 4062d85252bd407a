// The VM templates of the cri section's `hako-template` runtime handler
// (docs/templating.md): `hako factory init` with the kernel's templating
// configuration before its pods are measured, `hako factory destroy` in the
// section's teardown. The templates live under the bench state dir
// (KernelEnv.templateDir), so that templateLeaks can tell whether one survived.
// The `hako-cache` handler's VM cache: `hako factory cache` runs from after
// the init until the teardown.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { NETNS_DIR, idleCachedVms } from "../../test/helpers/leaks.js";
import { commandLine, processTable, runToEnd } from "../../test/helpers/processes.js";
import { HAKO, startVmCache, type VmCacheDaemon } from "../../test/helpers/hako.js";
import { track, untrack } from "./children.js";
import { BENCH_VM_CACHE_NUMBER, type KernelEnv } from "./env.js";
import { smapsRollup } from "./measure.js";

/** Two template VMs booted cold under TCG (~5 s each) plus their warm-up; generous for a loaded host. */
const INIT_TIMEOUT_MS = 240_000;
const DESTROY_TIMEOUT_MS = 60_000;
/** What an error message quotes of the command's output: its end holds the reason. */
const OUTPUT_TAIL = 2_000;

/** What the templates left if they leaked: the template dirs, and the scratch netns `factory init` makes (`hako-tpl-<its pid>`). */
const made = { dirs: [] as string[], netns: [] as string[], cacheDirs: [] as string[], cacheStateDirs: [] as string[] };

interface HakoExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `hako --config <templating config> factory <verb>`, tracked like every child of the benchmark. */
async function factory(k: KernelEnv, verb: "init" | "destroy", timeoutMs: number): Promise<HakoExit> {
  const t0 = performance.now();
  let pid: number | undefined;
  try {
    const r = await runToEnd(HAKO, ["--config", k.templateConfigFile, "factory", verb], {
      timeoutMs,
      // SIGTERM, not SIGKILL: the CLI then gets to stop the template VM it is building.
      timeoutSignal: "SIGTERM",
      onSpawn: (p) => {
        pid = p;
        track(p, `hako factory ${verb}`);
        if (verb === "init" && p !== undefined) made.netns.push(`${NETNS_DIR}/hako-tpl-${p}`);
      },
    });
    return { code: r.status, signal: r.signal, stdout: r.stdout.toString(), stderr: r.stderr, ms: performance.now() - t0 };
  } finally {
    untrack(pid);
  }
}

const tail = (s: string): string => (s.length > OUTPUT_TAIL ? `…${s.slice(-OUTPUT_TAIL)}` : s).trim();

/** Builds the templates; returns how long `hako factory init` took. Throws with its stderr when it fails. */
export async function initTemplates(k: KernelEnv, log: (s: string) => void): Promise<number> {
  if (!made.dirs.includes(k.templateDir)) made.dirs.push(k.templateDir);
  const r = await factory(k, "init", INIT_TIMEOUT_MS);
  if (r.code !== 0) {
    const how = r.signal ? `killed by ${r.signal}` : `exit status ${r.code}`;
    throw new Error(`hako factory init (${k.templateConfigFile}) failed, ${how}, after ${r.ms.toFixed(0)} ms: ${tail(r.stderr) || tail(r.stdout) || "no output"}`);
  }
  for (const line of r.stdout.trim().split("\n").filter((l) => l !== "")) log(`bench: cri: factory init: ${line}`);
  log(`bench: cri: hako factory init took ${(r.ms / 1000).toFixed(1)} s`);
  return r.ms;
}

/** Removes the templates (best effort: what survives is reported by templateLeaks). */
export async function destroyTemplates(k: KernelEnv, log: (s: string) => void): Promise<void> {
  const r = await factory(k, "destroy", DESTROY_TIMEOUT_MS).catch((err: Error) => err);
  if (r instanceof Error) log(`bench: cri: hako factory destroy: ${r.message}`);
  else if (r.code !== 0) log(`bench: cri: hako factory destroy failed (exit status ${r.code}, signal ${r.signal}): ${tail(r.stderr) || tail(r.stdout)}`);
  else log(`bench: cri: factory destroy: ${r.stdout.trim()}`);
}

/** Waiting for the VM cache to be full again (a refill is a restore + warm-up, ~1.5 s, after 1.5 s without a claim). */
export const CACHE_FILL_TIMEOUT_MS = 120_000;

/** Starts the VM cache of the kernel's cache configuration; resolves once it is full. */
export async function startCache(k: KernelEnv, log: (s: string) => void): Promise<VmCacheDaemon> {
  const stateDir = k.config.runtime.state_dir;
  made.cacheDirs.push(join(stateDir, "vm-cache"));
  made.cacheStateDirs.push(stateDir);
  const t0 = performance.now();
  const d = await startVmCache({
    config: k.cacheConfigFile,
    fillTimeoutMs: CACHE_FILL_TIMEOUT_MS,
    onSpawn: (pid) => {
      track(pid, "hako factory cache");
      if (pid !== undefined) made.netns.push(`${NETNS_DIR}/hako-vmcache-${pid}`);
    },
  });
  log(`bench: cri: hako factory cache (pid ${d.pid}) full after ${((performance.now() - t0) / 1000).toFixed(1)} s: ${BENCH_VM_CACHE_NUMBER} warm VMs per template`);
  return d;
}

/** Stops the VM cache (it stops the VMs no pod took); logs how it went. */
export async function stopCache(d: VmCacheDaemon, log: (s: string) => void): Promise<void> {
  const r = await d.stop();
  untrack(d.pid);
  if (r.status !== 0) log(`bench: cri: hako factory cache exited with status ${r.status}: ${tail(r.stderr)}`);
  else log("bench: cri: hako factory cache stopped");
}

/** Template dirs, scratch netns of `factory init`, the VM cache's dir and netns still there. */
export function templateLeaks(): string[] {
  return [...made.dirs, ...made.netns, ...made.cacheDirs].filter((p) => existsSync(p));
}

/** QEMUs the VM cache started that still run (named vmcache-<id>, not after a pod: criLeaks' name scan misses them). */
export function vmCacheProcesses(): string[] {
  if (made.cacheStateDirs.length === 0) return [];
  return processTable()
    .filter((p) => p.comm.startsWith("qemu") && made.cacheStateDirs.some((d) => commandLine(p).includes(join(d, "vm-cache") + "/")))
    .map((p) => `${p.pid} ${commandLine(p).slice(0, 120)}`);
}

/** The VM cache's idle VMs (QEMUs started under <state_dir>/vm-cache that no sandbox took) and their summed PSS. */
export function cacheIdleMemory(k: KernelEnv): { vms: number; pssMiB: number } {
  const qemus = idleCachedVms(k.config.runtime.state_dir);
  return { vms: qemus.length, pssMiB: qemus.reduce((acc, p) => acc + smapsRollup(p.pid).pssKb / 1024, 0) };
}
