import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultConfig, type HakoConfig } from "../../src/runtime/config.js";
import { cachedVmCounts, claimCachedVm, fillRetryDelayMs, vmCacheRoot, type CachedVmRecord } from "../../src/runtime/vm-cache.js";
import { AdoptedQemuProcess, procState } from "../../src/hypervisor/qemu/vmm-process.js";

function fixture(): { dir: string; cfg: HakoConfig } {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-vmcache-"));
  const cfg = defaultConfig();
  cfg.runtime.state_dir = join(dir, "state");
  return { dir, cfg };
}

/** A cached VM entry as the daemon publishes it (`hidden`: still being filled). */
function entry(cfg: HakoConfig, key: string, id: string, pid: number, hidden = false): string {
  const d = join(vmCacheRoot(cfg), key, hidden ? `.${id}` : id);
  mkdirSync(join(d, "shared"), { recursive: true });
  const rec: CachedVmRecord = { key, pid, taps: [], netnsPath: "", created: "now", readyMs: 1 };
  writeFileSync(join(d, "entry.json"), JSON.stringify(rec));
  return d;
}

/** The pid of a process that has exited (and been reaped). */
function deadPid(): number {
  const r = spawnSync("true");
  return r.pid!;
}

test("claim: each cached VM goes to one sandbox; entries being filled, of another template or whose QEMU is gone are not handed out", () => {
  const { dir, cfg } = fixture();
  try {
    entry(cfg, "k1", "aaaa", process.pid);
    entry(cfg, "k1", "bbbb", deadPid());
    entry(cfg, "k1", "cccc", process.pid, true);
    entry(cfg, "k2", "dddd", process.pid);
    assert.deepEqual(cachedVmCounts(cfg), { k1: 2, k2: 1 });
    mkdirSync(join(dir, "sb1"));
    const got = claimCachedVm(cfg, "k1", join(dir, "sb1", "vm"));
    assert.equal(got?.pid, process.pid);
    assert.ok(existsSync(join(dir, "sb1", "vm", "shared")), "the entry's directory moved into the sandbox");
    mkdirSync(join(dir, "sb2"));
    assert.equal(claimCachedVm(cfg, "k1", join(dir, "sb2", "vm")), undefined, "the dead one is not handed out");
    assert.equal(existsSync(join(dir, "sb2", "vm")), false, "and its directory is removed");
    assert.deepEqual(readdirSync(join(vmCacheRoot(cfg), "k1")), [".cccc"], "the one being filled stays");
    assert.equal(claimCachedVm(cfg, "k3", join(dir, "sb2", "vm")), undefined, "no cache for that template");
    assert.equal(claimCachedVm(cfg, "k2", join(dir, "sb2", "vm"))?.key, "k2");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("an adopted QEMU's exit is seen through /proc; a kill is reported as the signal", async () => {
  const child = spawn("sleep", ["30"], { stdio: "ignore" });
  const pid = child.pid!;
  const proc = new AdoptedQemuProcess(pid, 50);
  assert.equal(proc.running, true);
  assert.equal(await proc.waitExit(100), false);
  proc.signal("SIGTERM");
  assert.equal(await proc.waitExit(5000), true);
  assert.deepEqual(await proc.exited, { code: null, signal: "SIGTERM" });
  assert.equal(procState(pid) === "alive", false);
  assert.equal(await proc.outputText(), "", "its output went to the process that spawned it");
});

test("a template whose fills keep failing is tried again after 5 s, then twice as long each time, at most every 5 min", () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 8, 20].map(fillRetryDelayMs), [5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000, 300_000]);
  assert.equal(fillRetryDelayMs(0), 5_000, "no failure yet: the first delay");
});
