import { test } from "node:test";
import assert from "node:assert/strict";
import { sandboxSize, SANDBOX_CPU_PERIOD, SANDBOX_CPU_QUOTA, SANDBOX_MEMORY } from "../../src/runtime/sandbox-sizing.js";
import { BundleError } from "../../src/runtime/errors.js";

const defaults = { vcpus: 1, memoryMiB: 512 };

test("no annotations: the configured defaults", () => {
  assert.deepEqual(sandboxSize("p", undefined, defaults, 8), defaults);
  assert.deepEqual(sandboxSize("p", {}, defaults, 8), defaults);
});

test("pod totals are added to the defaults, rounded up", () => {
  const a = { [SANDBOX_CPU_QUOTA]: "150000", [SANDBOX_CPU_PERIOD]: "100000", [SANDBOX_MEMORY]: String(256 * 1024 * 1024 + 1) };
  assert.deepEqual(sandboxSize("p", a, defaults, 8), { vcpus: 3, memoryMiB: 512 + 257 });
});

test("vCPUs never exceed the host's CPUs; unlimited (-1) adds nothing", () => {
  assert.equal(sandboxSize("p", { [SANDBOX_CPU_QUOTA]: "800000", [SANDBOX_CPU_PERIOD]: "100000" }, defaults, 2).vcpus, 2);
  assert.deepEqual(sandboxSize("p", { [SANDBOX_CPU_QUOTA]: "-1", [SANDBOX_CPU_PERIOD]: "100000", [SANDBOX_MEMORY]: "0" }, defaults, 8), defaults);
});

test("a malformed annotation is a BundleError naming key and sandbox", () => {
  assert.throws(
    () => sandboxSize("pod-1", { [SANDBOX_MEMORY]: "lots" }, defaults, 8),
    (e: Error) => e instanceof BundleError && /io\.kubernetes\.cri\.sandbox-memory="lots" of sandbox pod-1/.test(e.message),
  );
});
