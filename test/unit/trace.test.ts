import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { archiveTrace, MAX_TRACES, readArchivedTrace, renderTraceSvg, renderTraceText, traceFromState } from "../../src/runtime/trace.js";

const state = {
  id: "pod1",
  created: "2026-11-23T00:00:00.000Z",
  accel: "tcg",
  timeline: { config: 20, network_attached: 60, vmm_started: 110, agent_ready: 3500, guest_network: 3780, sandbox_created: 3800, container_created: 4400, container_started: 4900 },
};

test("phases run from mark to mark; the guest's launch uptime splits kernel boot from agent start", () => {
  const t = traceFromState({ ...state, guestAgentLaunchUptimeMs: 1500 });
  assert.deepEqual(
    t.phases.map((p) => [p.name, p.startMs, p.endMs]),
    [
      ["config", 0, 20],
      ["network_attached", 20, 60],
      ["vmm_started", 60, 110],
      ["guest_kernel_booted", 110, 1520],
      ["agent_ready", 1520, 3500],
      ["guest_network", 3500, 3780],
      ["sandbox_created", 3500, 3800],
      ["container_created", 3800, 4400],
      ["container_started", 4400, 4900],
    ],
  );
  assert.equal(t.totalMs, 4900);
  // Without the guest's figure, or with one that does not fit, there is no split.
  assert.ok(!traceFromState(state).phases.some((p) => p.name === "guest_kernel_booted"));
  assert.ok(!traceFromState({ ...state, guestAgentLaunchUptimeMs: 9000 }).phases.some((p) => p.name === "guest_kernel_booted"));
});

test("a cached VM's start: adopting it, its agent and the guest set-up overlap the taps' move", () => {
  const cached = {
    ...state,
    timeline: { config: 1, vm_cache_claimed: 12, vmm_adopted: 16, agent_ready: 40, network_attached: 70, sandbox_created: 110, guest_network: 200, container_created: 350, container_started: 560 },
  };
  assert.deepEqual(
    traceFromState(cached).phases.map((p) => [p.name, p.startMs, p.endMs]),
    [
      ["config", 0, 1],
      ["vm_cache_claimed", 1, 12],
      ["network_attached", 12, 70],
      ["vmm_adopted", 12, 16],
      ["agent_ready", 16, 40],
      ["guest_network", 40, 200],
      ["sandbox_created", 40, 110],
      ["container_created", 200, 350],
      ["container_started", 350, 560],
    ],
  );
});

test("text and SVG renderings name every phase with its duration", () => {
  const t = traceFromState(state);
  const text = renderTraceText(t);
  assert.match(text, /sandbox pod1 \(tcg\).*4900 ms/);
  assert.match(text, /netns scan \+ taps \+ tc filters\s+20\s+40/);
  const svg = renderTraceSvg(t);
  assert.match(svg, /^<svg /);
  assert.equal((svg.match(/<rect /g) ?? []).length, t.phases.length);
  assert.match(svg, /QEMU spawn → running \(QMP\)/);
});

test("archived traces are kept per id and pruned to the newest MAX_TRACES", () => {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-trace-"));
  try {
    for (let i = 0; i < MAX_TRACES + 3; i++) archiveTrace(dir, { ...traceFromState({ ...state, id: `s${i}` }) });
    assert.equal(readdirSync(join(dir, "traces")).length, MAX_TRACES);
    assert.equal(readArchivedTrace(dir, `s${MAX_TRACES + 2}`)?.totalMs, 4900);
    assert.equal(readArchivedTrace(dir, "nope"), undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
