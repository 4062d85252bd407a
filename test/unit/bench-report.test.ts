// The boot section's verdict on issue 2's target, `hako run` ≤ 1.25 × (floor
// + agent start): on the medians, and paired run by run.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { KernelEnv } from "../../bench/lib/env.js";
import type { SandboxSample } from "../../bench/lib/measure.js";
import { comparisonTable, kernelTable, summarizeKernel, type KernelSamples } from "../../bench/lib/report.js";

function samples(agentReady: number[], run: number[]): KernelSamples {
  const sandbox = agentReady.map(
    (ms): SandboxSample => ({ timeline: {}, spawnToAgentMs: ms, spawnToQmpMs: 50, guestAgentReadyMs: ms - 200, createSandboxMs: 40, destroyMs: 80, rssMiB: 300, pssMiB: 290 }),
  );
  return { floor: agentReady.map(() => ({ markerMs: 1500, exitMs: 1600 })), run, sandbox, cli: agentReady.map(() => 60) };
}

const env = { kernel: "generic", release: "6.1.0", probe: { accel: "tcg", reason: "test" } } as unknown as KernelEnv;

test("a slow run beside a fast boot moves the medians' verdict, not the paired one", () => {
  // Iteration 3's `hako run` was slow while its agent ready was not: every other run is 1.2×.
  const r = summarizeKernel(env, samples([3000, 3000, 3000, 4500, 4500], [3600, 3600, 5400, 5400, 5400]));
  assert.equal(r.target.value, 5400 / 3000);
  assert.equal(r.target.met, false);
  assert.equal(r.target.paired, 1.2);
  assert.equal(r.target.pairedMet, true);
  assert.match(kernelTable(r), /paired \(each run \/ the agent ready beside it, median\) = 1\.200 {2}MET/);
  assert.match(comparisonTable([r]), /the same, paired ≤ 1\.25\s+1\.200 MET/);
});

test("both verdicts agree when the runs are steady", () => {
  const r = summarizeKernel(env, samples([3000, 3100, 3200, 3300, 3400], [4000, 4100, 4200, 4300, 4400]));
  assert.equal(r.target.met, r.target.pairedMet);
  assert.ok(r.target.value > 1.25 && r.target.paired > 1.25);
});
