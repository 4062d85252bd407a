// `hako run` end to end: a real QEMU VM (TCG here), the real agent, crun in
// the guest. Every test checks that nothing leaked afterwards.
import { test, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as pty from "node-pty";
import { makeBundle, makeTempDir, removeDir, writeConfig } from "../helpers/bundle.js";
import { HAKO, TEST_STATE_DIR, hako, hakoEnv, hakoSpawn, hakoSync } from "../helpers/hako.js";
import { describeLeaks, findLeaks, hasLeaks } from "../helpers/leaks.js";

const HOST_KERNEL = execFileSync("uname", ["-r"], { encoding: "utf8" }).trim();
let seq = 0;
const newId = (): string => `t${process.pid}-${seq++}`;
const bundles: string[] = [];
function bundle(args: string[], extra: { terminal?: boolean } = {}): string {
  const b = makeBundle({ args, ...extra });
  bundles.push(b);
  return b;
}

afterEach(() => {
  const l = findLeaks(TEST_STATE_DIR);
  assert.ok(!hasLeaks(l), `leaked: ${describeLeaks(l)}`);
});
after(() => {
  for (const b of bundles) removeDir(b);
});

async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("uname -r in the container prints the guest kernel, not the host's", async () => {
  const r = await hako(["run", "--bundle", bundle(["uname", "-r"]), newId()]);
  assert.equal(r.status, 0, r.stderr);
  const guest = r.stdout.toString().trim();
  assert.match(guest, /^\d+\.\d+\.\d+/);
  assert.notEqual(guest, HOST_KERNEL);
});

test("stdout and stderr are separate and the exit status comes back", async () => {
  const r = await hako(["run", "--bundle", bundle(["sh", "-c", "echo out; echo err >&2; exit 7"]), newId()]);
  assert.equal(r.stdout.toString(), "out\n");
  assert.equal(r.stderr, "err\n");
  assert.equal(r.status, 7);
});

test("stdin piped in comes back through cat", async () => {
  const input = "hello from the host\nline two\n";
  const r = await hako(["run", "--bundle", bundle(["cat"]), newId()], { input });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.toString(), input);
});

test("5 MiB of stdout arrives byte-identical", async () => {
  const script = "head -c 5242880 /dev/urandom > /tmp/blob && sha256sum /tmp/blob >&2 && cat /tmp/blob";
  const r = await hako(["run", "--bundle", bundle(["sh", "-c", script]), newId()]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.length, 5 * 1024 * 1024);
  const guestSum = r.stderr.trim().split(/\s+/)[0];
  assert.equal(createHash("sha256").update(r.stdout).digest("hex"), guestSum);
});

test("a process killed by a signal reports 128+N", async () => {
  // PID 1 of a pid namespace ignores signals it has no handler for, so this
  // bundle runs in the VM's pid namespace, where the shell can kill itself.
  const b = bundle(["sh", "-c", "kill -KILL $$"]);
  const cfg = JSON.parse(readFileSync(join(b, "config.json"), "utf8")) as { linux: { namespaces: Array<{ type: string }> } };
  cfg.linux.namespaces = cfg.linux.namespaces.filter((n) => n.type !== "pid");
  writeFileSync(join(b, "config.json"), JSON.stringify(cfg));
  const r = await hako(["run", "--bundle", b, newId()]);
  assert.equal(r.status, 137, r.stderr);
});

test("the guest reaps orphans: no zombie is left after orphaned children exit", async () => {
  // Without a pid namespace the container sees every guest process, zombies included.
  const script = "for i in 1 2 3 4; do (sleep 0.2 &); done; sleep 2; cat /proc/[0-9]*/stat 2>/dev/null | awk '$3 == \"Z\"' | wc -l";
  const b = bundle(["sh", "-c", script]);
  const cfg = JSON.parse(readFileSync(join(b, "config.json"), "utf8")) as { linux: { namespaces: Array<{ type: string }> } };
  cfg.linux.namespaces = cfg.linux.namespaces.filter((n) => n.type !== "pid");
  writeFileSync(join(b, "config.json"), JSON.stringify(cfg));
  const r = await hako(["run", "--bundle", b, newId()]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.toString().trim(), "0");
});

test("hako run -t gives the process a terminal of the caller's size, and follows resizes", async () => {
  const b = bundle(["sh", "-c", "test -t 0 && test -t 1 && echo IS_A_TTY; stty size; read line; stty size"], { terminal: true });
  const out = await new Promise<{ text: string; code: number }>((resolve) => {
    const p = pty.spawn(HAKO, ["run", "-t", "--bundle", b, newId()], { cols: 97, rows: 31, env: hakoEnv() as Record<string, string> });
    let text = "";
    let resized = false;
    p.onData((d) => {
      text += d;
      if (!resized && /31 97/.test(text)) {
        resized = true;
        p.resize(120, 40);
        // Give the SIGWINCH → TtyWinResize round trip a moment, then let the script go on.
        setTimeout(() => p.write("go\r"), 1500);
      }
    });
    p.onExit(({ exitCode }) => setTimeout(() => resolve({ text, code: exitCode }), 100));
  });
  assert.equal(out.code, 0, out.text);
  assert.match(out.text, /IS_A_TTY/);
  assert.match(out.text, /31 97/);
  assert.match(out.text, /40 120/, "size after the resize");
});

test("after hako run is SIGKILLed, hako delete -f removes the VM and every host resource", async () => {
  const id = newId();
  const child = hakoSpawn(["run", "--bundle", bundle(["sh", "-c", "echo started; exec sleep 1000"]), id]);
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  const exited = new Promise((r) => child.on("close", r));
  await waitFor(() => out.includes("started"), 90_000, "container start");
  child.kill("SIGKILL");
  await exited;
  assert.ok(findLeaks(TEST_STATE_DIR).qemu.length > 0, "the VM outlives a SIGKILLed owner");
  const del = hakoSync(["delete", "-f", id]);
  assert.equal(del.status, 0, del.stderr);
  assert.ok(!existsSync(join(TEST_STATE_DIR, "sandboxes", id)));
});

test("exec, state, list, kill and delete on a running container", async () => {
  const id = newId();
  const child = hakoSpawn(["run", "--bundle", bundle(["sh", "-c", "echo started; exec sleep 1000"]), id]);
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  let err = "";
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
  try {
    await waitFor(() => out.includes("started"), 90_000, `container start (stderr: ${err})`);
    const st = JSON.parse(hakoSync(["state", id]).stdout) as { status: string; pid: number };
    assert.equal(st.status, "running");
    assert.ok(st.pid > 0);
    const list = hakoSync(["list"]).stdout;
    assert.match(list, new RegExp(`^${id}\\s+running`, "m"));
    const ex = await hako(["exec", id, "hostname"]);
    assert.equal(ex.status, 0, ex.stderr);
    assert.equal(ex.stdout.toString().trim(), "hako", "the spec's hostname");
    const ex2 = await hako(["exec", id, "sh", "-c", "exit 5"]);
    assert.equal(ex2.status, 5);
    const del = hakoSync(["delete", id]);
    assert.notEqual(del.status, 0, "delete of a running container without --force must fail");
    assert.match(del.stderr, /is running/);
    const k = hakoSync(["kill", id, "KILL"]);
    assert.equal(k.status, 0, k.stderr);
    assert.equal(await exited, 137);
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
    await exited;
    hakoSync(["delete", "-f", id]);
  }
  assert.ok(!existsSync(join(TEST_STATE_DIR, "sandboxes", id)));
  const gone = hakoSync(["state", id]);
  assert.notEqual(gone.status, 0);
  assert.match(gone.stderr, /does not exist/);
});

test("bad bundles end with a one-line error, non-zero status and no VM", async () => {
  const cases: Array<{ name: string; prepare: (dir: string) => void; expect: RegExp }> = [
    { name: "missing config.json", prepare: (d) => removeDir(join(d, "config.json")), expect: /no config\.json/ },
    { name: "invalid JSON", prepare: (d) => execFileSync("sh", ["-c", `echo '{"process": ' > ${d}/config.json`]), expect: /not valid JSON/ },
    { name: "missing process.args", prepare: (d) => writeConfig(d, { args: [] }), expect: /process\.args is missing or empty/ },
    { name: "rootfs absent", prepare: (d) => removeDir(join(d, "rootfs")), expect: /root filesystem .* does not exist/ },
  ];
  for (const c of cases) {
    const d = makeTempDir("bad");
    bundles.push(d);
    execFileSync("mkdir", ["-p", join(d, "rootfs")]);
    writeConfig(d, { args: ["true"] });
    c.prepare(d);
    const r = await hako(["run", "--bundle", d, newId()]);
    assert.notEqual(r.status, 0, c.name);
    assert.match(r.stderr, c.expect, c.name);
    assert.equal(r.stderr.trim().split("\n").length, 1, `${c.name}: one line, got ${r.stderr}`);
    assert.equal(r.stdout.length, 0);
  }
});

for (const [sig, when] of [
  ["SIGTERM", "boot"],
  ["SIGINT", "run"],
] as const) {
  test(`${sig} to hako run while the VM ${when === "boot" ? "boots" : "runs"} cleans everything up`, async () => {
    const id = newId();
    const child = hakoSpawn(["run", "--bundle", bundle(["sh", "-c", "echo started; exec sleep 1000"]), id]);
    let out = "";
    child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    const exited = new Promise<{ code: number | null; sig: NodeJS.Signals | null }>((r) => child.on("close", (code, s) => r({ code, sig: s })));
    if (when === "boot") {
      await waitFor(() => findLeaks(TEST_STATE_DIR).qemu.length > 0, 30_000, "QEMU to start");
    } else {
      await waitFor(() => out.includes("started"), 90_000, "container start");
    }
    child.kill(sig);
    const res = await exited;
    assert.equal(res.code, sig === "SIGTERM" ? 143 : 130);
    assert.ok(!existsSync(join(TEST_STATE_DIR, "sandboxes", id)), "state dir removed");
  });
}
