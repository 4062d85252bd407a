// QemuHypervisor error paths with fake "QEMU" programs (no VM is booted here;
// see test/integration/qemu-boot.test.ts for real boots).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultConfig, type QemuConfig } from "../../src/runtime/config.js";
import type { VmSpec } from "../../src/hypervisor/hypervisor.js";
import { QemuHypervisor, TailBuffer, fileTail } from "../../src/hypervisor/qemu/qemu-hypervisor.js";
import { HypervisorError } from "../../src/runtime/errors.js";
import { Code } from "../../src/protocols/ttrpc/status.js";
import { pidAlive as alive } from "../../src/runtime/state.js";

const dir = mkdtempSync(join(tmpdir(), "hako-qhv-test-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function script(name: string, body: string): string {
  const p = join(dir, name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`);
  chmodSync(p, 0o755);
  return p;
}

function cfg(path: string, over: Partial<QemuConfig> = {}): QemuConfig {
  return { ...defaultConfig().hypervisor.qemu, path, ...over };
}

let n = 0;
function spec(): VmSpec {
  const runDir = join(dir, `vm${n++}`);
  mkdirSync(runDir);
  return {
    id: `sb-${n}`,
    runDir,
    accel: "tcg",
    vcpus: 1,
    memoryMiB: 128,
    kernel: "/nonexistent/vmlinux",
    kernelParams: [],
    sharedDirs: [],
    consoleLog: join(runDir, "console.log"),
  };
}


const hv = (q: QemuConfig): QemuHypervisor => new QemuHypervisor(q, undefined, { hostTscKhz: 1000 });

test("QEMU exiting early: HypervisorError with its stderr and the console tail", async () => {
  const s = spec();
  writeFileSync(s.consoleLog, "");
  // The fake writes to the console log path it was given, then fails.
  const fake = script("early-exit", `echo "qemu: could not load kernel '/nonexistent/vmlinux'" >&2\necho "last console words" > ${s.consoleLog}\nexit 1`);
  await assert.rejects(hv(cfg(fake)).start(s), (err: unknown) => {
    assert.ok(err instanceof HypervisorError);
    assert.equal(err.id, s.id);
    assert.equal(err.code, Code.UNAVAILABLE);
    assert.match(err.message, new RegExp(`QEMU for sandbox ${s.id} exited during start \\(exit code 1\\)`));
    assert.match(err.message, /could not load kernel/);
    assert.match(err.message, /last console words/);
    return true;
  });
  assert.equal(existsSync(join(s.runDir, "qmp.sock")), false);
});

test("a QEMU binary that does not exist", async () => {
  await assert.rejects(hv(cfg(join(dir, "no-such-qemu"))).start(spec()), (err: unknown) => {
    assert.ok(err instanceof HypervisorError);
    assert.equal(err.code, Code.FAILED_PRECONDITION);
    assert.match(err.message, /cannot run QEMU .*no-such-qemu.*ENOENT.*hypervisor\.qemu\.path/);
    return true;
  });
});

test("no QMP within boot_timeout: QEMU is killed by pid", async () => {
  const pidFile = join(dir, "hang.pid");
  const fake = script("hang", `echo $$ > ${pidFile}\nexec sleep 30`);
  const t0 = Date.now();
  await assert.rejects(hv(cfg(fake, { boot_timeout: 1 })).start(spec()), (err: unknown) => {
    assert.ok(err instanceof HypervisorError);
    assert.equal(err.code, Code.DEADLINE_EXCEEDED);
    assert.match(err.message, /did not report a running VM within 1 s|did not accept connections in time/);
    return true;
  });
  assert.ok(Date.now() - t0 < 3000);
  const pid = Number(readFileSync(pidFile, "utf8"));
  assert.equal(alive(pid), false);
});

test("abort during start kills QEMU and reports CANCELLED", async () => {
  const pidFile = join(dir, "abort.pid");
  const fake = script("abort", `echo $$ > ${pidFile}\nexec sleep 30`);
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 200);
  await assert.rejects(hv(cfg(fake)).start(spec(), ac.signal), (err: unknown) => {
    assert.ok(err instanceof HypervisorError);
    assert.equal(err.code, Code.CANCELLED);
    assert.match(err.message, /was cancelled/);
    return true;
  });
  assert.equal(alive(Number(readFileSync(pidFile, "utf8"))), false);
  // An already aborted signal never spawns.
  await assert.rejects(hv(cfg(fake)).start(spec(), AbortSignal.abort()), /was cancelled/);
});

test("socket paths longer than sun_path are refused before spawning", async () => {
  const s = spec();
  s.runDir = join(dir, "x".repeat(120));
  await assert.rejects(hv(cfg("/bin/false")).start(s), /longer than 107 bytes/);
});

/** A fake QEMU speaking QMP on the -qmp socket. MODE: "ok" quits on `quit`; "stubborn" ignores quit and SIGTERM. */
function fakeQmpQemu(name: string, mode: "ok" | "stubborn"): string {
  const p = join(dir, name);
  writeFileSync(
    p,
    `#!${process.execPath}
const net = require("node:net");
const args = process.argv.slice(2);
const qmp = args[args.indexOf("-qmp") + 1].replace(/^unix:/, "").replace(/,server=on,wait=off$/, "");
if (${JSON.stringify(mode)} === "stubborn") process.on("SIGTERM", () => {});
let status = "running";
net.createServer((c) => {
  const send = (o) => c.write(JSON.stringify(o) + "\\r\\n");
  send({ QMP: { version: {}, capabilities: [] } });
  let buf = "";
  c.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\\n")) >= 0) {
      const m = JSON.parse(buf.slice(0, i)); buf = buf.slice(i + 1);
      if (m.execute === "query-status") send({ return: { status, running: status === "running" }, id: m.id });
      else if (m.execute === "stop") { status = "paused"; send({ event: "STOP" }); send({ return: {}, id: m.id }); }
      else if (m.execute === "cont") { status = "running"; send({ event: "RESUME" }); send({ return: {}, id: m.id }); }
      else if (m.execute === "quit") { if (${JSON.stringify(mode)} === "ok") { send({ return: {}, id: m.id }); process.exit(0); } }
      else send({ return: {}, id: m.id });
    }
  });
}).listen(qmp);
`,
  );
  chmodSync(p, 0o755);
  return p;
}

test("a VM that quits over QMP: pause/resume, stop cleans up", async () => {
  const s = spec();
  const vm = await hv(cfg(fakeQmpQemu("fake-ok.cjs", "ok"))).start(s);
  assert.ok(alive(vm.pid));
  await vm.pause();
  await vm.resume();
  const exit = await vm.stop(2000);
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.equal(alive(vm.pid), false);
  assert.equal(existsSync(join(s.runDir, "qmp.sock")), false);
  await assert.rejects(vm.resume(), /cannot resume the VM of sandbox .*: it is not running \(QEMU exit code 0\)/);
});

test("a VM that ignores quit and SIGTERM is SIGKILLed by pid", async () => {
  const s = spec();
  const vm = await hv(cfg(fakeQmpQemu("fake-stubborn.cjs", "stubborn"))).start(s);
  const t0 = Date.now();
  const exit = await vm.stop(200);
  assert.deepEqual(exit, { code: null, signal: "SIGKILL" });
  assert.ok(Date.now() - t0 < 3000);
  assert.equal(alive(vm.pid), false);
  assert.equal(existsSync(join(s.runDir, "qmp.sock")), false);
});

const root = process.getuid?.() === 0;

test("with a network, QEMU is started in the netns through nsenter, which execs it (the pid is QEMU's)", { skip: root ? false : "nsenter --net needs root" }, async () => {
  const ns = `hako-test-qhv-${process.pid}`;
  execFileSync("ip", ["netns", "add", ns]);
  try {
    const s = { ...spec(), network: { netnsPath: `/run/netns/${ns}`, nics: [] } };
    const vm = await hv(cfg(fakeQmpQemu("fake-netns.cjs", "ok"))).start(s);
    try {
      const cmdline = readFileSync(`/proc/${vm.pid}/cmdline`, "utf8").split("\0");
      assert.ok(cmdline.some((a) => a.endsWith("fake-netns.cjs")), cmdline.join(" "));
      assert.ok(!cmdline[0]!.endsWith("nsenter"), "nsenter replaced itself with QEMU");
      assert.equal(readlinkSync(`/proc/${vm.pid}/ns/net`), `net:[${statSync(`/run/netns/${ns}`).ino}]`, "QEMU runs in the pod netns");
    } finally {
      await vm.stop(2000);
    }
  } finally {
    execFileSync("ip", ["netns", "del", ns]);
  }
});

test("a netns that does not exist: the start fails, naming the netns", { skip: root ? false : "nsenter --net needs root" }, async () => {
  const s = { ...spec(), network: { netnsPath: join(dir, "no-such-netns"), nics: [{ tapName: "tap0_hako", mac: "02:00:00:00:00:01" }] } };
  await assert.rejects(hv(cfg(script("nons", "exit 3"))).start(s), (err: unknown) => {
    assert.ok(err instanceof HypervisorError);
    assert.match(err.message, /exited during start/);
    assert.match(err.message, /nsenter: cannot open .*no-such-netns/);
    assert.match(err.message, /QEMU was started in netns .*no-such-netns.*tap0_hako/);
    return true;
  });
});

test("TailBuffer keeps the last bytes; fileTail reads a file's end", async () => {
  const b = new TailBuffer(8);
  b.push(Buffer.from("hello "));
  b.push(Buffer.from("world"));
  assert.equal(b.text(), "lo world");
  b.push(Buffer.from("0123456789abc"));
  assert.equal(b.text(), "56789abc");
  const f = join(dir, "tail.txt");
  writeFileSync(f, "a".repeat(5000) + "\r\nEND\x1b[0m");
  assert.equal(await fileTail(f, 9), "\nEND[0m");
  assert.equal(await fileTail(join(dir, "missing")), "");
});
