import { test } from "node:test";
import { existsSync } from "node:fs";
import assert from "node:assert/strict";
import { QemuProcess } from "../../src/hypervisor/qemu/vmm-process.js";
import { QEMU_GLIBC_TUNABLES, defaultConfig } from "../../src/runtime/config.js";
import { ksmExecPath } from "../../src/runtime/paths.js";
import { ksmMergeAnyAvailable } from "../../src/resource/ksm.js";

/** Runs `sh -c 'echo "[$GLIBC_TUNABLES]"'` the way a QEMU is spawned and returns what it printed. */
async function tunablesSeen(tunables: string, inherited: string | undefined): Promise<string> {
  const saved = process.env.GLIBC_TUNABLES;
  if (inherited === undefined) delete process.env.GLIBC_TUNABLES;
  else process.env.GLIBC_TUNABLES = inherited;
  try {
    const proc = await QemuProcess.spawn("envtest", "/bin/sh", ["-c", 'echo "[${GLIBC_TUNABLES-unset}]"'], { glibcTunables: tunables });
    await proc.exited;
    await proc.waitExit(5000);
    await new Promise((r) => setTimeout(r, 50));
    return proc.output.text().trim();
  } finally {
    if (saved === undefined) delete process.env.GLIBC_TUNABLES;
    else process.env.GLIBC_TUNABLES = saved;
  }
}

test("QEMU is spawned with the configured GLIBC_TUNABLES, before any it inherits", async () => {
  assert.equal(defaultConfig().hypervisor.qemu.glibc_tunables, QEMU_GLIBC_TUNABLES);
  assert.match(QEMU_GLIBC_TUNABLES, /^glibc\.malloc\.mmap_threshold=131072:glibc\.malloc\.trim_threshold=131072$/);
  assert.equal(await tunablesSeen(QEMU_GLIBC_TUNABLES, undefined), `[${QEMU_GLIBC_TUNABLES}]`);
  // The host's own setting comes after ours: glibc takes the last value of a tunable.
  assert.equal(await tunablesSeen("glibc.malloc.trim_threshold=1", "glibc.malloc.trim_threshold=2"), "[glibc.malloc.trim_threshold=1:glibc.malloc.trim_threshold=2]");
  // "" leaves the environment as it is.
  assert.equal(await tunablesSeen("", undefined), "[unset]");
  assert.equal(await tunablesSeen("", "glibc.malloc.arena_max=1"), "[glibc.malloc.arena_max=1]");
});

/** What `/proc/self/ksm_stat` says of a process spawned as QEMU is, with merge_all_memory `mergeAll`, by a parent with `parentMergeAll`. */
async function mergeAnySeen(mergeAll: boolean, parentMergeAll: boolean): Promise<string> {
  // The parent: a shell that hako-ksm-exec gave `parentMergeAll`, running node, which spawns the "QEMU" as hako does.
  const script = `
    const { QemuProcess } = await import(${JSON.stringify(new URL("../../src/hypervisor/qemu/vmm-process.ts", import.meta.url).pathname)});
    const p = await QemuProcess.spawn("ksmtest", "/bin/sh", ["-c", "grep ksm_merge_any /proc/self/ksm_stat"], { ksm: { exec: ${JSON.stringify(ksmExecPath())}, mergeAll: ${mergeAll} } });
    await p.exited; await new Promise((r) => setTimeout(r, 50));
    process.stdout.write((await p.outputText()).trim());`;
  const { execFileSync } = await import("node:child_process");
  return execFileSync(ksmExecPath(), [parentMergeAll ? "on" : "off", process.execPath, "--import", "tsx", "--input-type=module", "-e", script], { encoding: "utf8" });
}

test("QEMU's memory is all mergeable by KSM with merge_all_memory, and only then, whatever the spawning process had", async (t) => {
  if (!ksmMergeAnyAvailable()) {
    t.skip("this kernel has no process-wide KSM setting (Linux 6.4+)");
    return;
  }
  assert.equal(defaultConfig().hypervisor.qemu.merge_all_memory, true);
  assert.ok(existsSync(ksmExecPath()), `${ksmExecPath()} is built by scripts/build.mjs`);
  assert.equal(await mergeAnySeen(true, false), "ksm_merge_any: yes");
  assert.equal(await mergeAnySeen(false, true), "ksm_merge_any: no", "off even when the shim (its parent) has it on");
  assert.equal(await mergeAnySeen(true, true), "ksm_merge_any: yes");
});
