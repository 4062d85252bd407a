import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultConfig } from "../../src/runtime/config.js";
import { probeIdentity } from "../../src/hypervisor/accel-probe.js";

test("a cached accelerator probe answer is keyed by the probe's command line and the files it boots", () => {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-probe-"));
  try {
    const kernel = join(dir, "vmlinux");
    const initrd = join(dir, "rootfs.initrd");
    const qemuBin = join(dir, "qemu");
    for (const f of [kernel, initrd, qemuBin]) writeFileSync(f, "x");
    const qemu = { ...defaultConfig().hypervisor.qemu, path: qemuBin };
    const id = probeIdentity({ qemu, kernel, initrd });
    assert.match(id, /^[0-9a-f]{16}$/);
    assert.equal(probeIdentity({ qemu, kernel, initrd }), id, "stable while nothing changes");
    // The probe's argv: the machine, the guest kernel command line (its lockdown).
    assert.notEqual(probeIdentity({ qemu: { ...qemu, guest_lockdown: "none" }, kernel, initrd }), id);
    assert.notEqual(probeIdentity({ qemu: { ...qemu, machine_type: "q35" }, kernel, initrd }), id);
    // A file rebuilt at the same path (hako image build), or an upgraded QEMU.
    writeFileSync(kernel, "rebuilt kernel");
    const rebuilt = probeIdentity({ qemu, kernel, initrd });
    assert.notEqual(rebuilt, id);
    utimesSync(qemuBin, new Date(0), new Date(0));
    assert.notEqual(probeIdentity({ qemu, kernel, initrd }), rebuilt);
    // A missing file is part of the identity too, not an error.
    rmSync(initrd);
    assert.match(probeIdentity({ qemu, kernel, initrd }), /^[0-9a-f]{16}$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
