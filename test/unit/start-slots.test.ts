// Host start slots (abstract Unix sockets): each test uses its own name prefix,
// so it neither sees nor blocks the slots of sandboxes running on this host.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { randomBytes } from "node:crypto";
import { StartSlots, startSlotLimit } from "../../src/runtime/start-slots.js";

const prefix = (): string => `hako-test/start-slot-${randomBytes(6).toString("hex")}`;
const settled = async (p: Promise<unknown>, ms: number): Promise<boolean> => {
  let done = false;
  void p.then(
    () => (done = true),
    () => (done = true),
  );
  await new Promise((r) => setTimeout(r, ms));
  return done;
};

test("start_concurrency: 0 is one per CPU, -1 no limit, N is N", () => {
  assert.equal(startSlotLimit(0, 2), 2);
  assert.equal(startSlotLimit(0, 16), 16);
  assert.equal(startSlotLimit(-1, 2), undefined);
  assert.equal(startSlotLimit(3, 2), 3);
  assert.throws(() => new StartSlots(0), RangeError);
});

test("at most `limit` holders; a release wakes a waiter at once, not at its retry timer", async () => {
  const slots = new StartSlots(2, { namePrefix: prefix(), retryMs: 30_000 });
  const a = await slots.acquire();
  const b = await slots.acquire();
  assert.ok(a && b);
  assert.notEqual(a.index, b.index);
  const third = slots.acquire();
  assert.equal(await settled(third, 300), false, "a third start waits while both slots are held");
  const t0 = performance.now();
  a.release();
  a.release(); // idempotent
  const c = await third;
  assert.ok(c, "the waiter got the freed slot");
  assert.equal(c.index, a.index);
  assert.ok(performance.now() - t0 < 5_000, "woken by the release, not the 30 s retry");
  assert.ok(c.waitedMs >= 250);
  b.release();
  c.release();
});

test("a slot whose holder process dies is free again (the kernel drops its socket)", async () => {
  const p = prefix();
  const child = spawn(process.execPath, ["-e", `require("node:net").createServer().listen("\\0${p}/0", () => console.log("held"))`], { stdio: ["ignore", "pipe", "inherit"] });
  try {
    await once(child.stdout, "data");
    const slots = new StartSlots(1, { namePrefix: p, retryMs: 30_000 });
    const waiting = slots.acquire();
    assert.equal(await settled(waiting, 300), false, "slot 0 is held by the child");
    child.kill("SIGKILL");
    const s = await waiting;
    assert.ok(s);
    s.release();
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
});

test("a holder loses its slot after holdMaxMs; a waiter gives up after waitMaxMs; abort rejects", async () => {
  const p = prefix();
  const stuck = await new StartSlots(1, { namePrefix: p, holdMaxMs: 400 }).acquire();
  assert.ok(stuck);
  const next = await new StartSlots(1, { namePrefix: p, retryMs: 30_000 }).acquire();
  assert.ok(next, "the stuck holder's slot came free by itself");
  const gaveUp = await new StartSlots(1, { namePrefix: p, waitMaxMs: 300, retryMs: 100 }).acquire();
  assert.equal(gaveUp, undefined, "no slot within waitMaxMs: start without one");
  const ac = new AbortController();
  const aborted = new StartSlots(1, { namePrefix: p }).acquire(ac.signal);
  setTimeout(() => ac.abort(new Error("sandbox start cancelled")), 100);
  await assert.rejects(aborted, /sandbox start cancelled/);
  next.release();
  stuck.release();
});

test("expireIn shortens a hold (the grace after a VM is up); expireIn(Infinity) keeps it to the hold limit", async () => {
  const p = prefix();
  const holder = await new StartSlots(1, { namePrefix: p, holdMaxMs: 60_000 }).acquire();
  assert.ok(holder);
  holder.expireIn(200);
  holder.expireIn(Infinity); // a container came: back to the hold limit
  const waiting = new StartSlots(1, { namePrefix: p, retryMs: 30_000 }).acquire();
  assert.equal(await settled(waiting, 500), false, "kept past the grace");
  holder.expireIn(100);
  const s = await waiting;
  assert.ok(s, "freed after the grace");
  s.release();
  holder.release(); // idempotent after expiry
});
