// untilSeen (src/runtime/watch-poll.ts): woken by inotify, a poll as the safety net.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { untilSeen } from "../../src/runtime/watch-poll.js";
import { makeTempDir } from "../helpers/bundle.js";

const dir = makeTempDir("watch-poll");
after(() => rmSync(dir, { recursive: true, force: true }));
const read = (p: string): string | undefined => {
  try {
    return readFileSync(p, "utf8");
  } catch {
    return undefined;
  }
};

test("a write in the directory wakes it long before the poll would", async () => {
  const file = join(dir, "pid");
  setTimeout(() => writeFileSync(file, "42"), 50);
  const t0 = performance.now();
  assert.equal(await untilSeen(dir, () => read(file), 10_000), "42");
  assert.ok(performance.now() - t0 < 5_000, "it waited for the 10 s poll");
});

test("wakeOn wakes it too, and check decides when to give up", async () => {
  let done = false;
  const settled = new Promise((r) => setTimeout(r, 50)).then(() => (done = true));
  const t0 = performance.now();
  assert.equal(await untilSeen(dir, () => (done ? "gave up" : undefined), 10_000, settled), "gave up");
  assert.ok(performance.now() - t0 < 5_000);
});

test("without events the poll still finds it", async () => {
  let calls = 0;
  assert.equal(await untilSeen(join(dir, "no-such-dir"), () => (++calls >= 3 ? calls : undefined), 10), 3);
});
