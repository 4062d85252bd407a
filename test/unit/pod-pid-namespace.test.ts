// The pod's pid namespace holder, with the host's busybox (the guest's is the
// same Debian busybox-static): pid 1 of a namespace of its own, deaf to the
// signals a pod could send it, reaping orphans; made again after it dies.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, readlinkSync } from "node:fs";
import { PodPidNamespace } from "../../src/agent/pod-pid-namespace.js";
import { createLogger } from "../../src/runtime/logger.js";

const quiet = createLogger("test", { level: "silent" });
const holderOf = (nsPath: string): number => Number(/^\/proc\/(\d+)\/ns\/pid$/.exec(nsPath)?.[1]);
const statusField = (pid: number, field: string): string => new RegExp(`^${field}:\\s*(.*)$`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? "";
const alive = (pid: number): boolean => {
  try {
    return !/^State:\s*Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return false;
  }
};
async function until(what: string, ok: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("the holder is pid 1 of a new pid namespace, ignores TERM, reaps orphans, and is made again once killed", async () => {
  const ns = new PodPidNamespace(quiet);
  const first = await ns.path();
  assert.equal(await ns.path(), first, "made once");
  const holder = holderOf(first);
  const killed: number[] = [holder];
  try {
    const firstNs = readlinkSync(first);
    assert.notEqual(firstNs, readlinkSync("/proc/self/ns/pid"), "not the caller's pid namespace");
    assert.match(statusField(holder, "NSpid"), new RegExp(`^${holder}\\s+1$`), "pid 1 in its namespace");
    // A process in the namespace leaves an orphan: the holder inherits and reaps it.
    const out = execFileSync("nsenter", [`--pid=${first}`, "--", "/bin/busybox", "sh", "-c", "(/bin/busybox sleep 0.2 &); echo $$"], { encoding: "utf8" });
    assert.ok(Number(out.trim()) > 1, `a process of the namespace: ${out.trim()}`);
    await new Promise((r) => setTimeout(r, 600));
    const children = readFileSync(`/proc/${holder}/task/${holder}/children`, "utf8").trim().split(/\s+/).map(Number);
    assert.deepEqual(children.filter((c) => !alive(c) || statusField(c, "State").startsWith("Z")), [], "no zombie left under the holder");
    assert.equal(children.length, 1, `only its own sleep: ${children.join(" ")}`);
    process.kill(holder, "SIGTERM");
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(alive(holder), "TERM is ignored");
    process.kill(holder, "SIGKILL");
    await until("the killed holder is gone", () => !alive(holder));
    let next = first;
    for (const deadline = Date.now() + 5000; next === first && Date.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 20));
      next = await ns.path();
    }
    killed.push(holderOf(next));
    assert.notEqual(next, first, "a new holder once the old one is gone");
    // (its namespace may get the old one's inode number: that one is freed)
    assert.match(statusField(holderOf(next), "NSpid"), new RegExp(`^${holderOf(next)}\\s+1$`), "pid 1 of a namespace of its own");
  } finally {
    for (const pid of killed) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* gone */
      }
    }
  }
});
