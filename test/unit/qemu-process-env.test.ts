import { test } from "node:test";
import assert from "node:assert/strict";
import { QemuProcess } from "../../src/hypervisor/qemu/vmm-process.js";
import { QEMU_GLIBC_TUNABLES, defaultConfig } from "../../src/runtime/config.js";

/** Runs `sh -c 'echo "[$GLIBC_TUNABLES]"'` the way a QEMU is spawned and returns what it printed. */
async function tunablesSeen(tunables: string, inherited: string | undefined): Promise<string> {
  const saved = process.env.GLIBC_TUNABLES;
  if (inherited === undefined) delete process.env.GLIBC_TUNABLES;
  else process.env.GLIBC_TUNABLES = inherited;
  try {
    const proc = await QemuProcess.spawn("envtest", "/bin/sh", ["-c", 'echo "[${GLIBC_TUNABLES-unset}]"'], undefined, tunables);
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
