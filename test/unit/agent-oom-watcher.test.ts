import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OomWatcher, oomKillCount } from "../../src/agent/oom-watcher.js";

/** A stand-in cgroup directory and a fresh watcher for `fn`; both are undone after it. */
async function withCgroupDir(ids: readonly string[], fn: (dir: string, w: OomWatcher) => Promise<void> | void): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-oom-"));
  const w = new OomWatcher();
  try {
    await fn(dir, w);
  } finally {
    for (const id of ids) w.unwatch(id);
    rmSync(dir, { recursive: true, force: true });
  }
}

const events = (kills: number): string => `low 0\nhigh 0\nmax 3\noom ${kills}\noom_kill ${kills}\noom_group_kill 0\n`;

test("oomKillCount reads the oom_kill line, not oom or oom_group_kill", () => {
  assert.equal(oomKillCount(events(2)), 2);
  assert.equal(oomKillCount("oom 1\n"), undefined);
});

test("a rising oom_kill in memory.events is reported once, to a waiting GetOOMEvent", () =>
  withCgroupDir(["c1"], async (dir, w) => {
    writeFileSync(join(dir, "memory.events"), events(0));
    w.watch("c1", dir);
    assert.equal(w.sawKill("c1"), false);
    const next = w.next();
    writeFileSync(join(dir, "memory.events"), events(1));
    assert.equal(await next, "c1");
    assert.equal(w.sawKill("c1"), true);
    assert.equal(w.check("c1"), false, "the same count is not reported twice");
    // Queued when nobody waits; an aborted wait rejects.
    writeFileSync(join(dir, "memory.events"), events(2));
    assert.equal(w.check("c1"), true);
    assert.equal(await w.next(), "c1");
    const ac = new AbortController();
    const pending = w.next(ac.signal);
    ac.abort(new Error("connection closed"));
    await assert.rejects(pending, /connection closed/);
  }));

test("a container without memory.events is simply not watched", () => {
  const w = new OomWatcher();
  w.watch("c2", "/nonexistent-cgroup");
  assert.equal(w.check("c2"), false);
  w.unwatch("c2");
});

test("a kill counted before watch() (the process outran the agent) is reported at once, and once", () =>
  withCgroupDir(["c3"], async (dir, w) => {
    // crun made the cgroup for this container: its counter started at 0.
    writeFileSync(join(dir, "memory.events"), events(1));
    w.watch("c3", dir);
    assert.equal(w.sawKill("c3"), true);
    assert.equal(await w.next(), "c3");
    // The init's exit path watches too, should it come first: that keeps the first watch.
    w.watch("c3", dir);
    assert.equal(w.check("c3"), false, "not reported again");
    assert.equal(w.sawKill("c3"), true);
  }));

test("an init whose cgroup crun already removed: the parent's unclaimed kill is its own, not a sibling's", () =>
  withCgroupDir(["c1", "c2", "c3"], async (parent, w) => {
    const dir = (id: string): string => join(parent, id);
    writeFileSync(join(parent, "memory.events"), events(4)); // kills from before: not ours
    for (const id of ["c1", "c2", "c3"]) {
      mkdirSync(dir(id));
      writeFileSync(join(dir(id), "memory.events"), events(0));
      w.prepare(dir(id));
      w.watch(id, dir(id));
    }
    // c1's init and a process of c2 are killed at once; c1 exits and crun
    // removes its cgroup before the agent has read either counter.
    writeFileSync(join(dir("c2"), "memory.events"), events(1));
    rmSync(dir("c1"), { recursive: true });
    writeFileSync(join(parent, "memory.events"), events(6));
    assert.equal(w.settleExit("c1"), true, "c1 had the unclaimed kill");
    assert.equal(w.sawKill("c2"), true, "c2's own counter was read first");
    assert.equal(w.sawKill("c3"), false);
    assert.equal(w.settleExit("c1"), true, "asking again changes nothing");
    // c3 exits normally later: nothing is left unclaimed.
    assert.equal(w.settleExit("c3"), false);
    const reported = [await w.next(), await w.next()].sort();
    assert.deepEqual(reported, ["c1", "c2"]);
  }));
