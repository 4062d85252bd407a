// The agent's guest clock policy (src/agent/guest-system.ts): busybox `date -s`
// sets whole seconds, so a clock far off is stepped at once and set exactly,
// at a whole second of the host's, a few seconds later.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ALIGN_AFTER_MS, ALIGN_SLACK_MS, clockAlignment, clockStep } from "../../src/agent/guest-system.js";

const HOST = 1_795_560_000_123; // ms since the epoch, .123 past a whole second

test("clockStep: a clock more than a second off steps to the host's whole second; one within a second is left alone", () => {
  assert.equal(clockStep(HOST, HOST - 300_000), 1_795_560_000n); // a clone resumed five minutes behind
  assert.equal(clockStep(HOST, HOST + 1_500), 1_795_560_000n); // ahead too
  assert.equal(clockStep(HOST, HOST - 999), undefined); // a cold VM that read the RTC at boot
  assert.equal(clockStep(HOST, HOST + 1_000), undefined);
  assert.equal(clockStep(0, HOST), undefined, "no host time in the request");
});

test("clockAlignment: the first whole second ALIGN_AFTER_MS ahead, and how long until the host gets there", () => {
  const a = clockAlignment(HOST, -123); // just stepped: behind by the fraction
  assert.ok(a);
  assert.equal(a.toSec, 1_795_560_004n);
  assert.equal(a.inMs, 4_000 - 123);
  assert.ok(a.inMs >= ALIGN_AFTER_MS && a.inMs < ALIGN_AFTER_MS + 1_000);
  // Exactly on a second: that second plus ALIGN_AFTER_MS.
  assert.deepEqual(clockAlignment(1_795_560_000_000, 700), { toSec: 1_795_560_003n, inMs: 3_000 });
  // Within the slack (a request's own latency): nothing to do.
  assert.equal(clockAlignment(HOST, -ALIGN_SLACK_MS), undefined);
  assert.equal(clockAlignment(HOST, ALIGN_SLACK_MS), undefined);
  assert.ok(clockAlignment(HOST, ALIGN_SLACK_MS + 1));
  assert.equal(clockAlignment(0, 500), undefined, "no host time in the request");
});

test("stepping then aligning only moves a clock forward, to the host's time", () => {
  for (const host of [HOST, 1_795_560_000_999, 1_795_560_000_001]) {
    const step = clockStep(host, host - 60_000)!;
    const guestAfterStep = Number(step) * 1000; // the guest reads the whole second right after the step
    const a = clockAlignment(host, guestAfterStep - host);
    if (host - guestAfterStep <= ALIGN_SLACK_MS) {
      assert.equal(a, undefined, "a step that lands within the slack needs no second setting");
      continue;
    }
    assert.ok(a);
    // When the host reaches toSec, the guest (still running from the step) is at toSec - (host - step).
    const guestThen = guestAfterStep + a.inMs;
    assert.ok(Number(a.toSec) * 1000 >= guestThen, "the exact setting moves the clock forward");
    assert.ok(Number(a.toSec) * 1000 - guestThen < 1000, "by less than a second");
  }
});
