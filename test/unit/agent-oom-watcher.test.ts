import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OomWatcher, oomKillCount } from "../../src/agent/oom-watcher.js";

const events = (kills: number): string => `low 0\nhigh 0\nmax 3\noom ${kills}\noom_kill ${kills}\noom_group_kill 0\n`;

test("oomKillCount reads the oom_kill line, not oom or oom_group_kill", () => {
  assert.equal(oomKillCount(events(2)), 2);
  assert.equal(oomKillCount("oom 1\n"), undefined);
});

test("a rising oom_kill in memory.events is reported once, to a waiting GetOOMEvent", async () => {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-oom-"));
  const w = new OomWatcher();
  try {
    writeFileSync(join(dir, "memory.events"), events(1));
    w.watch("c1", dir);
    assert.equal(w.sawKill("c1"), false, "kills before watch() are not this container's news");
    const next = w.next();
    writeFileSync(join(dir, "memory.events"), events(2));
    assert.equal(await next, "c1");
    assert.equal(w.sawKill("c1"), true);
    assert.equal(w.check("c1"), false, "the same count is not reported twice");
    // Queued when nobody waits; an aborted wait rejects.
    writeFileSync(join(dir, "memory.events"), events(3));
    assert.equal(w.check("c1"), true);
    assert.equal(await w.next(), "c1");
    const ac = new AbortController();
    const pending = w.next(ac.signal);
    ac.abort(new Error("connection closed"));
    await assert.rejects(pending, /connection closed/);
  } finally {
    w.unwatch("c1");
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a container without memory.events is simply not watched", () => {
  const w = new OomWatcher();
  w.watch("c2", "/nonexistent-cgroup");
  assert.equal(w.check("c2"), false);
  w.unwatch("c2");
});
