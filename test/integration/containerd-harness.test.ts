// The private-containerd harness itself: start, import the local busybox
// image, run a container with the default runc runtime, stop, nothing left.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { startContainerd, importBusybox, mountsUnder, pidsMatching, type Containerd } from "../helpers/containerd.js";

test("private containerd runs busybox with runc, survives a restart and cleans up after itself", { timeout: 120_000 }, async (t) => {
  const c: Containerd = await startContainerd({ namespace: "hako-harness" });
  const pid = c.pid();
  assert.ok(pid, "containerd has a pid");
  try {
    const ref = await importBusybox(c);
    assert.equal(ref, "localhost/busybox:latest");

    const r = await c.ctr(["run", "--rm", ref, "h1", "echo", "hello"], { timeoutMs: 60_000 });
    assert.equal(r.status, 0, `ctr run failed: ${r.stderr}\n${c.logs()}`);
    assert.equal(r.stdout.toString(), "hello\n");

    const left = await c.ctr(["containers", "ls", "-q"]);
    assert.equal(left.stdout.toString().trim(), "", "ctr run --rm removed its container");

    // A task survives a containerd restart, and stop() still cleans it up.
    const d = await c.ctr(["run", "-d", ref, "h2", "sleep", "600"]);
    assert.equal(d.status, 0, `ctr run -d failed: ${d.stderr}`);
    await c.restart();
    assert.notEqual(c.pid(), pid, "restart() started a new containerd");
    assert.equal(existsSync(`/proc/${pid}`), false, "old containerd is gone");
    const tasks = await c.ctr(["tasks", "ls"]);
    assert.match(tasks.stdout.toString(), /^h2\s+\d+\s+RUNNING/m);
  } catch (e) {
    t.diagnostic(`containerd log:\n${c.logs()}`);
    throw e;
  } finally {
    await c.stop();
  }

  for (const p of [pid, c.pid()]) assert.equal(existsSync(`/proc/${p}`), false, `containerd ${p} still running`);
  assert.deepEqual(pidsMatching(c.address), [], "no shim or ctr serving the private containerd");
  assert.equal(existsSync(c.dir), false, `${c.dir} removed`);
  assert.deepEqual(mountsUnder(c.dir), [], "nothing mounted under root/state");
  await c.stop(); // idempotent
});
