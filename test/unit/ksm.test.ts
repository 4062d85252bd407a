// KSM control against a fake sysfs directory (the real one is host-wide).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KSM_AGGRESSIVE, ksmAvailable, ksmMergeAnyAvailable, readKsmSettings, readKsmStats, waitKsmSettled, writeKsmSettings } from "../../src/resource/ksm.js";
import { recoverKsm, restoreKsm, setKsmPace } from "../../bench/lib/ksm-journal.js";

function fakeKsm(values: Record<string, number>): string {
  const dir = mkdtempSync(join(tmpdir(), "hako-ksm-test-"));
  for (const [k, v] of Object.entries(values)) writeFileSync(join(dir, k), `${v}\n`);
  return dir;
}

const BASE = { run: 0, pages_to_scan: 100, sleep_millisecs: 20, full_scans: 7, pages_shared: 0, pages_sharing: 0 };

test("settings are read and written back; stopping a running ksmd unmerges first", () => {
  const dir = fakeKsm(BASE);
  try {
    assert.equal(ksmAvailable(dir), true);
    assert.equal(ksmAvailable(join(dir, "nope")), false);
    const before = readKsmSettings(dir);
    assert.deepEqual(before, { run: 0, pagesToScan: 100, sleepMillisecs: 20 });
    writeKsmSettings({ run: 1, pagesToScan: 5000, sleepMillisecs: 10 }, dir);
    assert.deepEqual(readKsmSettings(dir), { run: 1, pagesToScan: 5000, sleepMillisecs: 10 });
    // sysfs keeps only the last write; the fake file shows that run ended at 0 (after the "2").
    writeKsmSettings(before, dir);
    assert.deepEqual(readKsmSettings(dir), before);
    assert.deepEqual(readKsmStats(dir), { fullScans: 7, pagesShared: 0, pagesSharing: 0 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("settled: after the minimum full scans, once a pass changes the pages saved by < 1 %", async () => {
  const dir = fakeKsm({ ...BASE, run: 1 });
  // Each tick is one full scan; the pages saved grow, then level off.
  const sharing = [1000, 5000, 9000, 9050, 9060, 9060];
  let i = 0;
  const timer = setInterval(() => {
    if (i >= sharing.length) return;
    writeFileSync(join(dir, "pages_sharing"), String(sharing[i]));
    writeFileSync(join(dir, "full_scans"), String(8 + i));
    i++;
  }, 30);
  try {
    const r = await waitKsmSettled({ timeoutMs: 5000, pollMs: 10 }, dir);
    assert.equal(r.settled, true);
    // 9000 → 9050 is 0.55 %: settled at that pass, not earlier (5000 → 9000 is 44 %).
    assert.equal(r.stats.pagesSharing >= 9050, true, JSON.stringify(r.stats));
  } finally {
    clearInterval(timer);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("not settled: gives up after the timeout when no full scan completes", async () => {
  const dir = fakeKsm({ ...BASE, run: 1 });
  try {
    const r = await waitKsmSettled({ timeoutMs: 100, pollMs: 10 }, dir);
    assert.equal(r.settled, false);
    assert.equal(r.waitedMs >= 100, true);
    assert.equal(readFileSync(join(dir, "run"), "utf8").trim(), "1");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the bench's KSM journal: a killed run's settings are put back by the next run", () => {
  const dir = fakeKsm(BASE);
  const journal = join(dir, "journal.json");
  try {
    const before = setKsmPace(KSM_AGGRESSIVE, journal, dir);
    assert.deepEqual(before, { run: 0, pagesToScan: 100, sleepMillisecs: 20 });
    assert.deepEqual(readKsmSettings(dir), KSM_AGGRESSIVE);
    assert.ok(existsSync(journal), "noted before the change");
    // Killed here: no restore ran. The next run recovers.
    assert.deepEqual(recoverKsm(journal, dir), before);
    assert.deepEqual(readKsmSettings(dir), before);
    assert.equal(existsSync(journal), false);
    assert.equal(recoverKsm(journal, dir), undefined, "nothing left to recover");
    // The normal path: set, then restore; no journal left.
    restoreKsm(setKsmPace(KSM_AGGRESSIVE, journal, dir), journal, dir);
    assert.deepEqual(readKsmSettings(dir), before);
    assert.equal(existsSync(journal), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("whole-process merging is available when a process's ksm_stat has ksm_merge_any", () => {
  const dir = mkdtempSync(join(tmpdir(), "hako-ksmstat-"));
  try {
    assert.equal(ksmMergeAnyAvailable(dir), false, "no ksm_stat (a kernel without KSM)");
    writeFileSync(join(dir, "ksm_stat"), "ksm_rmap_items 0\nksm_zero_pages 0\n");
    assert.equal(ksmMergeAnyAvailable(dir), false, "a kernel before 6.4");
    writeFileSync(join(dir, "ksm_stat"), "ksm_rmap_items 0\nksm_merge_any: no\nksm_mergeable: no\n");
    assert.equal(ksmMergeAnyAvailable(dir), true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
