import { test } from "node:test";
import assert from "node:assert/strict";
import { HIGH_WATER, OutputBuffer } from "../../src/agent/output-buffer.js";
import { statusOf, AgentError, BundleError } from "../../src/runtime/errors.js";
import { Code } from "../../src/protocols/ttrpc/status.js";

test("reads return buffered data in order, split at the requested size, then EOF", async () => {
  const b = new OutputBuffer();
  b.push(Buffer.from("hello "));
  b.push(Buffer.from("world"));
  assert.equal((await b.read(3)).data.toString(), "hel");
  assert.equal((await b.read(100)).data.toString(), "lo world");
  b.end();
  assert.deepEqual(await b.read(10), { data: Buffer.alloc(0), eof: true });
});

test("a read waits for data and an abort returns an empty, non-EOF result", async () => {
  const b = new OutputBuffer();
  const pending = b.read(10);
  setTimeout(() => b.push(Buffer.from("late")), 10);
  assert.equal((await pending).data.toString(), "late");
  const ac = new AbortController();
  const aborted = b.read(10, ac.signal);
  ac.abort();
  assert.deepEqual(await aborted, { data: Buffer.alloc(0), eof: false });
});

test("the source is paused above the high-water mark and resumed once drained", async () => {
  const b = new OutputBuffer();
  const events: string[] = [];
  b.attach({ pause: () => events.push("pause"), resume: () => events.push("resume") });
  b.push(Buffer.alloc(HIGH_WATER + 1));
  assert.deepEqual(events, ["pause"]);
  await b.read(HIGH_WATER);
  assert.deepEqual(events, ["pause", "resume"]);
});

test("statusOf maps domain errors and errno codes to wire statuses in one place", () => {
  assert.deepEqual(statusOf(new AgentError("c1", "container c1 not found", { code: Code.NOT_FOUND })), { code: Code.NOT_FOUND, message: "container c1 not found" });
  assert.equal(statusOf(new BundleError("c1", "bad")).code, Code.INVALID_ARGUMENT);
  assert.equal(statusOf(Object.assign(new Error("x"), { code: "ENOENT" })).code, Code.NOT_FOUND);
  assert.equal(statusOf("weird").code, Code.UNKNOWN);
});
