// After a warm-up: a template's agent collects everything, a cached VM's
// only scavenges (V8's gc({type: "minor"}), seen as minor GCs by node),
// and skips the spawn rounds its template ran.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";

/** The kinds of the GCs node reports as started during collectAfterWarmUp, in a node with --expose-gc. */
function gcKinds(inClone: boolean): string[] {
  const script = `
    import { PerformanceObserver, constants } from "node:perf_hooks";
    const { collectAfterWarmUp } = await import(${JSON.stringify(new URL("../../src/agent/warm-up.ts", import.meta.url).pathname)});
    const names = { [constants.NODE_PERFORMANCE_GC_MINOR]: "minor", [constants.NODE_PERFORMANCE_GC_MAJOR]: "major" };
    const seen = [];
    let t0 = Infinity, t1 = Infinity;
    const obs = new PerformanceObserver((list) => { for (const e of list.getEntries()) if (e.startTime >= t0 && e.startTime <= t1) seen.push(names[e.detail.kind] ?? String(e.detail.kind)); });
    obs.observe({ entryTypes: ["gc"] });
    let keep = []; for (let i = 0; i < 1e5; i++) keep.push({ i }); keep = null;
    await new Promise((r) => setTimeout(r, 50));
    t0 = performance.now();
    collectAfterWarmUp(globalThis.gc, ${inClone});
    t1 = performance.now();
    await new Promise((r) => setTimeout(r, 50));
    process.stdout.write(JSON.stringify(seen));`;
  return JSON.parse(execFileSync(process.execPath, ["--expose-gc", "--import", "tsx", "--input-type=module", "-e", script], { encoding: "utf8" })) as string[];
}

test("a template's warm-up ends with a full GC, a cached VM's with two scavenges", () => {
  assert.deepEqual(gcKinds(false), ["major"]);
  assert.deepEqual(gcKinds(true), ["minor", "minor"]);
});

test("a cached VM's warm-up skips the spawn rounds its template ran; both make the pod pid namespace, then the network and a container", async () => {
  const { warmUpSteps } = await import("../../src/agent/warm-up.js");
  assert.deepEqual(warmUpSteps(false, true), ["spawns", "pod-pid-namespace", "network-tools", "nics", "container"]);
  assert.deepEqual(warmUpSteps(true, true), ["pod-pid-namespace", "network-tools", "nics", "container"]);
  assert.deepEqual(warmUpSteps(false, false), ["spawns", "pod-pid-namespace"]);
});
