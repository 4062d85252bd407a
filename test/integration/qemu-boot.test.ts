// Real QEMU boots (TCG) through QemuHypervisor, and the accelerator probe.
// Needs qemu-system-x86_64 and the guest assets (build/share/hako/guest, or
// HAKO_GUEST_DIR): vmlinux-generic and hako-rootfs.initrd.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { defaultConfig } from "../../src/runtime/config.js";
import { HypervisorError } from "../../src/runtime/errors.js";
import type { VmSpec } from "../../src/hypervisor/hypervisor.js";
import { QemuHypervisor, QemuVirtualMachine } from "../../src/hypervisor/qemu/qemu-hypervisor.js";
import { probeAccelerator, probeBoot } from "../../src/hypervisor/accel-probe.js";
import { pidAlive as alive } from "../../src/runtime/state.js";

const repo = resolve(fileURLToPath(import.meta.url), "..", "..", "..");
const guestDir = process.env.HAKO_GUEST_DIR ?? join(repo, "build", "share", "hako", "guest");
const kernel = join(guestDir, "vmlinux-generic");
const initrd = join(guestDir, "hako-rootfs.initrd");
// node's own image (the initrd links /usr/bin/node into it): the agent starts and waits for the host.
const nodeImage = join(guestDir, "hako-node.erofs");
const qemu = { ...defaultConfig().hypervisor.qemu, kernel, initrd, node_image: nodeImage, boot_timeout: 30 };
const missing = [qemu.path, kernel, initrd, nodeImage].filter((p) => !existsSync(p));
const skip = missing.length > 0 ? `missing ${missing.join(", ")}` : false;

const dir = mkdtempSync(join(tmpdir(), "hako-qemu-boot-"));
after(() => rmSync(dir, { recursive: true, force: true }));


function spec(name: string, over: Partial<VmSpec> = {}): VmSpec {
  const runDir = join(dir, name);
  mkdirSync(runDir);
  return {
    id: `it-${name}`,
    runDir,
    accel: "tcg",
    vcpus: 1,
    memoryMiB: 512,
    kernel,
    initrd,
    nodeImage,
    kernelParams: [],
    sharedDirs: [],
    consoleLog: join(runDir, "console.log"),
    ...over,
  };
}

async function waitForConsole(path: string, re: RegExp, ms: number): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const text = existsSync(path) ? readFileSync(path, "utf8") : "";
    if (re.test(text)) return text;
    if (Date.now() > deadline) throw new Error(`console ${path} did not match ${re} within ${ms} ms; tail:\n${text.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("boots a VM under TCG, pauses and resumes it over QMP, stops it cleanly", { skip }, async () => {
  const hv = new QemuHypervisor(qemu);
  const s = spec("boot", { verboseConsole: true });
  const t0 = Date.now();
  const vm = await hv.start(s);
  const tRunning = Date.now() - t0;
  try {
    assert.ok(vm.pid > 0 && alive(vm.pid));
    assert.ok(existsSync(join(s.runDir, "qmp.sock")));
    assert.ok(existsSync(vm.agentSocketPath));
    assert.equal(Number(readFileSync(join(s.runDir, "qemu.pid"), "utf8")), vm.pid);

    const text = await waitForConsole(s.consoleLog, /Run \/init as init process/, 30_000);
    const tBooted = Date.now() - t0;
    assert.match(text, /Linux version 6\.1/);

    assert.ok(vm instanceof QemuVirtualMachine);
    const qmp = vm.monitor;
    const stopEv = once(qmp, "STOP");
    await vm.pause();
    await stopEv;
    assert.equal((await qmp.execute<{ status: string }>("query-status")).status, "paused");
    const resumeEv = once(qmp, "RESUME");
    await vm.resume();
    await resumeEv;
    assert.equal((await qmp.execute<{ status: string }>("query-status")).status, "running");

    const tStop = Date.now();
    const exit = await vm.stop();
    console.log(`# QEMU running after ${tRunning} ms, kernel ran /init after ${tBooted} ms, stop took ${Date.now() - tStop} ms`);
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.equal(alive(vm.pid), false);
    for (const f of ["qmp.sock", "agent.sock", "qemu.pid"]) assert.equal(existsSync(join(s.runDir, f)), false, f);
    assert.deepEqual(await vm.exited, exit);
    // stop() is idempotent; pause after exit is a clear error.
    assert.deepEqual(await vm.stop(), exit);
    await assert.rejects(vm.pause(), /cannot pause the VM of sandbox it-boot: it is not running/);
  } finally {
    if (alive(vm.pid)) process.kill(vm.pid, "SIGKILL");
  }
});

test("QEMU failing at start reports its stderr and leaves nothing behind", { skip }, async () => {
  const hv = new QemuHypervisor(qemu);
  const s = spec("badkernel", { kernel: join(dir, "no-such-vmlinux") });
  await assert.rejects(hv.start(s), (err: unknown) => {
    assert.ok(err instanceof HypervisorError);
    assert.match(err.message, /QEMU for sandbox it-badkernel exited during start \(exit code 1\)/);
    assert.match(err.message, /no-such-vmlinux/);
    return true;
  });
  assert.equal(existsSync(join(s.runDir, "qmp.sock")), false);
});

test("accelerator probe: /dev/kvm here does not boot guests, so auto picks tcg; cached per boot", { skip: skip || (!existsSync("/dev/kvm") && "no /dev/kvm") }, async () => {
  const cacheFile = join(dir, "probe", "accel-probe.json");
  const timeoutMs = 8000;
  const t0 = Date.now();
  const first = await probeAccelerator({ qemu, kernel, initrd, cacheFile, timeoutMs });
  const ms = Date.now() - t0;
  console.log(`# KVM probe: ${ms} ms (${first.reason})`);
  assert.equal(first.accel, "tcg");
  assert.equal(first.kvmDevicePresent, true);
  assert.equal(first.kvmBoots, false);
  assert.ok(ms < timeoutMs + 2000, `probe took ${ms} ms`);
  assert.ok(first.bootId.length > 0);
  assert.equal(first.cached, undefined);
  assert.ok(existsSync(cacheFile));

  const t1 = Date.now();
  const second = await probeAccelerator({ qemu, kernel, initrd, cacheFile, timeoutMs });
  assert.ok(Date.now() - t1 < 100);
  const { cached, ...rest } = second;
  assert.equal(cached, true);
  assert.deepEqual(rest, first);

  // A configured accelerator is taken as is, without probing.
  const configured = await probeAccelerator({ qemu: { ...qemu, accel: "tcg" }, kernel, initrd, cacheFile, timeoutMs });
  assert.equal(configured.reason, "configured");
  assert.equal(configured.accel, "tcg");
});

test("probe boot under TCG sees HAKO_PROBE_OK (what `hako check` verifies)", { skip }, async () => {
  const r = await probeBoot("tcg", { qemu, kernel, initrd, timeoutMs: 30_000 });
  console.log(`# TCG probe boot: ${r.ms} ms`);
  assert.equal(r.ok, true, r.detail);
});
