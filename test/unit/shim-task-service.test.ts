// The shim's Task service over a real ttRPC connection, with a fake runtime
// behind it: what containerd's Create deadline (ttRPC timeout_nano) does to a
// sandbox start that has not finished.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Task } from "../../src/protocols/gen/containerd/runtime/task/v2/shim_pb.js";
import { Code, TtrpcClient, TtrpcError, TtrpcServer, createServiceClient } from "../../src/protocols/ttrpc/index.js";
import { createLogger } from "../../src/runtime/logger.js";
import { abandonedStart, type ShimRuntime } from "../../src/shim/shim-runtime.js";
import { taskService } from "../../src/shim/task-service.js";

let dir = "";
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "hako-task-service-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test("Create: containerd's deadline reaches the runtime as an abort, and the error says what was given up", async () => {
  const seen: { signal?: AbortSignal; reason?: unknown } = {};
  // A sandbox start that waits (for a start slot, say) until its signal aborts.
  const rt = {
    create(req: { id: string }, signal?: AbortSignal): Promise<number> {
      seen.signal = signal;
      return new Promise((_resolve, reject) => {
        signal?.addEventListener("abort", () => {
          seen.reason = signal.reason;
          reject(abandonedStart(req.id, signal.reason, new Error("slot wait aborted")));
        });
      });
    },
  } as unknown as ShimRuntime;
  const server = new TtrpcServer();
  server.register(Task, taskService(rt, createLogger("test", { level: "silent" }), () => undefined));
  const socketPath = path.join(dir, "shim.sock");
  await server.listen(socketPath);
  const client = await TtrpcClient.connect(socketPath);
  try {
    const task = createServiceClient(Task, client);
    const t0 = Date.now();
    const err = await task.create({ id: "pod1", bundle: "/nonexistent" }, { timeoutMs: 300 }).then(
      () => assert.fail("Create should fail"),
      (e: unknown) => e,
    );
    assert.ok(seen.signal, "the runtime got the call's signal");
    // The client gives up at its own timer; the server's deadline timer fires about as soon.
    for (let i = 0; i < 50 && !seen.signal.aborted; i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(seen.signal.aborted, "it aborted when the deadline passed");
    assert.ok(seen.reason instanceof TtrpcError && seen.reason.code === Code.DEADLINE_EXCEEDED, `reason: ${String(seen.reason)}`);
    assert.ok(err instanceof TtrpcError, String(err));
    assert.equal(err.code, Code.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - t0 < 5000, "the call ended at its deadline, not later");
  } finally {
    client.close();
    await server.close();
  }
});

test("abandonedStart: DEADLINE_EXCEEDED for a deadline, CANCELLED for a caller gone; names the sandbox", () => {
  const late = abandonedStart("sb1", new TtrpcError(Code.DEADLINE_EXCEEDED, "context deadline exceeded"), undefined);
  assert.equal(late.code, Code.DEADLINE_EXCEEDED);
  assert.match(late.message, /sandbox sb1: start given up before its VM was up: its deadline passed/);
  const gone = abandonedStart("sb2", new TtrpcError(Code.CANCELLED, "connection closed"), undefined);
  assert.equal(gone.code, Code.CANCELLED);
  assert.match(gone.message, /sb2.*the caller went away/);
  assert.equal(abandonedStart("sb3", new Error("other"), undefined).code, Code.CANCELLED);
});
