// The agent's helper shell (src/agent/helper-shell.ts), run here on the host:
// the same helper.sh loop under /bin/sh, connected by pipes instead of FIFOs.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync, type ChildProcessByStdio } from "node:child_process";
import { readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Readable, Writable } from "node:stream";
import { CommandFailed, HELPER_SH, HelperShell, runCommand, runScript, useHelperShell } from "../../src/agent/helper-shell.js";
import { AGENT_SH } from "../../src/image/rootfs-tree.js";
import { commandErrorText } from "../../src/runtime/command.js";
import { makeTempDir } from "../helpers/bundle.js";

const dirs: string[] = [];
const children: Array<ChildProcessByStdio<Writable, Readable, null>> = [];
after(() => {
  useHelperShell(undefined);
  for (const c of children) if (c.exitCode === null && c.signalCode === null) killGroup(c);
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** The helper and whatever it runs (started in its own process group). */
function killGroup(c: ChildProcessByStdio<Writable, Readable, null>): void {
  try {
    process.kill(-c.pid!, "SIGKILL");
  } catch {
    /* gone */
  }
}

function startHelper(): { helper: HelperShell; dir: string; child: ChildProcessByStdio<Writable, Readable, null>; exited: Promise<void> } {
  const dir = makeTempDir("helper-shell");
  dirs.push(dir);
  writeFileSync(join(dir, "helper.sh"), HELPER_SH);
  const child = spawn("/bin/sh", [join(dir, "helper.sh")], { stdio: ["pipe", "pipe", "inherit"], detached: true });
  children.push(child);
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  return { helper: new HelperShell(child.stdin, child.stdout, dir), dir, child, exited };
}

test("agent.sh and helper.sh are valid sh", () => {
  for (const script of [AGENT_SH, HELPER_SH]) execFileSync("/bin/sh", ["-n"], { input: script });
});

test("a script's stdout and stderr come back, and its files are removed", async () => {
  const { helper, dir, child, exited } = startHelper();
  const out = await helper.run("echo out; echo err >&2\n");
  assert.deepEqual(out, { stdout: "out\n", stderr: "err\n" });
  assert.deepEqual(readdirSync(dir), ["helper.sh"]);
  child.stdin.end();
  await exited; // EOF on its input ends the helper
  assert.equal(child.exitCode, 0);
});

test("a failure rejects with its status and stderr, and the helper goes on", async () => {
  const { helper, child, exited } = startHelper();
  const err = await helper.run("echo 'no such device' >&2; exit 3\n").then(
    () => assert.fail("resolved"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof CommandFailed);
  assert.equal(err.status, 3);
  assert.equal(commandErrorText(err), "no such device");
  assert.equal((await helper.run("echo again\n")).stdout, "again\n");
  child.stdin.end();
  await exited;
});

test("concurrent requests run side by side, each answered with its own output", async () => {
  const { helper, child, exited } = startHelper();
  const t0 = performance.now();
  const outs = await Promise.all([1, 2, 3, 4, 5].map((i) => helper.run(`sleep 0.5; echo ${i}\n`)));
  assert.deepEqual(outs.map((o) => o.stdout), ["1\n", "2\n", "3\n", "4\n", "5\n"]);
  assert.ok(performance.now() - t0 < 2000, "five 0.5 s scripts took 2.5 s: they ran one after the other");
  child.stdin.end();
  await exited;
});

test("runCommand passes every argument through unchanged, and runScript runs scripts", async () => {
  const { helper, child, exited } = startHelper();
  useHelperShell(helper);
  try {
    const args = ["a b", "it's", "$HOME", "`x`", "*", ""];
    const out = await runCommand("/usr/bin/printf", ["[%s]", ...args]);
    assert.equal(out.stdout, args.map((a) => `[${a}]`).join(""));
    assert.equal((await runScript("x=4; echo $((x * 2))\n")).stdout, "8\n");
    await assert.rejects(runCommand("/bin/false", []), CommandFailed);
  } finally {
    useHelperShell(undefined);
    child.stdin.end();
    await exited;
  }
});

test("a command that does not finish in time fails alone: the helper runs the next ones meanwhile", async () => {
  const { helper, child, exited } = startHelper();
  try {
    const stuck = helper.run("sleep 2\n", 200);
    assert.equal((await helper.run("echo meanwhile\n")).stdout, "meanwhile\n");
    await assert.rejects(stuck, /sleep 2: did not finish within 200 ms/);
    assert.equal(helper.broken, undefined);
    assert.equal((await helper.run("echo after\n")).stdout, "after\n");
  } finally {
    killGroup(child);
    await exited;
  }
});

test("a helper that exits fails what it was running, and commands are spawned after", async () => {
  const { helper, child, exited } = startHelper();
  useHelperShell(helper);
  try {
    const running = helper.run("sleep 5\n");
    setTimeout(() => killGroup(child), 100);
    await assert.rejects(running, /the helper shell exited/);
    await exited;
    assert.equal((await runScript("echo spawned\n")).stdout, "spawned\n");
  } finally {
    useHelperShell(undefined);
  }
});
