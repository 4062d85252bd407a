import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { TaskExitSchema, TaskStartSchema, TaskCreateSchema } from "../../src/protocols/gen/containerd/events/task_pb.js";
import { Events } from "../../src/protocols/gen/containerd/services/events/ttrpc/v1/events_pb.js";
import type { Envelope } from "../../src/protocols/gen/containerd/services/events/ttrpc/v1/events_pb.js";
import { Code, NAMESPACE_METADATA_KEY, TtrpcError, TtrpcServer } from "../../src/protocols/ttrpc/index.js";
import { EventPublisher, TaskTopic, eventTypeUrl } from "../../src/shim/events.js";

let dir = "";
let n = 0;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "hako-shim-events-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});
const sockPath = (): string => path.join(dir, `ev${++n}.sock`);

interface FakeContainerd {
  server: TtrpcServer;
  received: Envelope[];
  metadata: string[];
  maxConcurrent: number;
}

function fakeContainerd(opts: { delayMs?: (i: number) => number; failFirst?: number } = {}): FakeContainerd {
  const server = new TtrpcServer();
  const fake: FakeContainerd = { server, received: [], metadata: [], maxConcurrent: 0 };
  let inFlight = 0;
  let calls = 0;
  server.register(Events, {
    async forward(req, ctx) {
      const i = calls++;
      inFlight++;
      fake.maxConcurrent = Math.max(fake.maxConcurrent, inFlight);
      try {
        const delay = opts.delayMs?.(i) ?? 0;
        if (delay > 0) await new Promise((r) => setTimeout(r, delay));
        if (i < (opts.failFirst ?? 0)) throw new TtrpcError(Code.UNAVAILABLE, "not ready");
        assert.ok(req.envelope);
        fake.received.push(req.envelope);
        fake.metadata.push(ctx.metadata[NAMESPACE_METADATA_KEY] ?? "");
        return {};
      } finally {
        inFlight--;
      }
    },
  });
  return fake;
}

describe("EventPublisher", () => {
  test("forwards envelopes in order, one at a time, with bare type URLs", async () => {
    const sock = sockPath();
    const fake = fakeContainerd({ delayMs: (i) => (i % 3 === 0 ? 15 : 0) });
    await fake.server.listen(sock);
    const pub = new EventPublisher({ address: `unix://${sock}` });
    try {
      const before = Date.now();
      pub.publish("k8s.io", TaskTopic.create, TaskCreateSchema, { containerId: "c1", bundle: "/b", pid: 7 });
      pub.publish("k8s.io", TaskTopic.start, TaskStartSchema, { containerId: "c1", pid: 7 });
      for (let i = 0; i < 10; i++) {
        pub.publish("k8s.io", TaskTopic.exit, TaskExitSchema, { containerId: "c1", id: `e${i}`, pid: 100 + i, exitStatus: i });
      }
      assert.ok(pub.pending > 0, "publish returns before sending");
      await pub.flush();
      assert.equal(fake.received.length, 12);
      assert.equal(fake.maxConcurrent, 1);
      assert.deepEqual(
        fake.received.map((e) => e.topic),
        ["/tasks/create", "/tasks/start", ...Array<string>(10).fill("/tasks/exit")],
      );
      assert.equal(fake.received[0]!.event?.typeUrl, "containerd.events.TaskCreate");
      assert.equal(fake.received[1]!.event?.typeUrl, "containerd.events.TaskStart");
      assert.equal(fake.received[2]!.event?.typeUrl, "containerd.events.TaskExit");
      assert.equal(eventTypeUrl(TaskExitSchema), "containerd.events.TaskExit");
      const create = fromBinary(TaskCreateSchema, fake.received[0]!.event!.value);
      assert.equal(create.containerId, "c1");
      assert.equal(create.pid, 7);
      const exits = fake.received.slice(2).map((e) => fromBinary(TaskExitSchema, e.event!.value).id);
      assert.deepEqual(exits, Array.from({ length: 10 }, (_, i) => `e${i}`));
      for (const e of fake.received) {
        assert.equal(e.namespace, "k8s.io");
        const ms = Number(e.timestamp!.seconds) * 1000 + e.timestamp!.nanos / 1e6;
        assert.ok(ms >= before - 1000 && ms <= Date.now() + 1000, "timestamp is now");
      }
      assert.deepEqual(new Set(fake.metadata), new Set(["k8s.io"]));
    } finally {
      await pub.close();
      await fake.server.close();
    }
  });

  test("retries a failed forward without reordering", async () => {
    const sock = sockPath();
    const fake = fakeContainerd({ failFirst: 2 });
    await fake.server.listen(sock);
    const pub = new EventPublisher({ address: sock, retryDelayMs: 5 });
    try {
      pub.publish("default", TaskTopic.start, TaskStartSchema, { containerId: "a" });
      pub.publish("default", TaskTopic.start, TaskStartSchema, { containerId: "b" });
      await pub.flush();
      assert.deepEqual(
        fake.received.map((e) => fromBinary(TaskStartSchema, e.event!.value).containerId),
        ["a", "b"],
      );
    } finally {
      await pub.close();
      await fake.server.close();
    }
  });

  test("reconnects when containerd comes (back) up", async () => {
    const sock = sockPath();
    const pub = new EventPublisher({ address: sock, retryDelayMs: 20, maxAttempts: 8 });
    const fake = fakeContainerd();
    try {
      pub.publish("default", TaskTopic.oom, TaskStartSchema, { containerId: "first" });
      await new Promise((r) => setTimeout(r, 30));
      await fake.server.listen(sock); // containerd appears while the event is retried
      await pub.flush();
      assert.equal(fake.received.length, 1);
      // The connection breaks (containerd restarts): the next event reconnects.
      await fake.server.close();
      const fake2 = fakeContainerd();
      await fake2.server.listen(sock);
      try {
        pub.publish("default", TaskTopic.exit, TaskExitSchema, { containerId: "second" });
        await pub.flush();
        assert.equal(fake2.received.length, 1);
        assert.equal(fromBinary(TaskExitSchema, fake2.received[0]!.event!.value).containerId, "second");
      } finally {
        await fake2.server.close();
      }
    } finally {
      await pub.close();
      await fake.server.close();
    }
  });

  test("publish's promise resolves once containerd accepted that event, or it was dropped", async () => {
    const sock = sockPath();
    const fake = fakeContainerd({ delayMs: () => 150 });
    await fake.server.listen(sock);
    const pub = new EventPublisher({ address: sock });
    try {
      let oomDone = false;
      const oom = pub.publish("k8s.io", TaskTopic.oom, TaskStartSchema, { containerId: "hog" }).then(() => (oomDone = true));
      await new Promise((r) => setTimeout(r, 60));
      assert.equal(oomDone, false, "not before containerd answered");
      await oom;
      assert.equal(fake.received.length, 1, "containerd has it when the promise resolves");
      const late = pub.publish("k8s.io", TaskTopic.exit, TaskExitSchema, { containerId: "hog" });
      await pub.close(10); // drops the event in flight
      await late;
    } finally {
      await fake.server.close();
    }
    await new EventPublisher({ address: "" }).publish("default", TaskTopic.oom, TaskStartSchema, { containerId: "x" });
  });

  test("drops an event after maxAttempts and goes on with the next", async () => {
    const sock = sockPath();
    const warnings: string[] = [];
    const logger = {
      debug: () => undefined,
      warn: (_o: object, m?: string) => void warnings.push(m ?? ""),
      error: (_o: object, m?: string) => void warnings.push(m ?? ""),
    };
    const pub = new EventPublisher({ address: sock, retryDelayMs: 1, maxAttempts: 2, logger });
    pub.publish("default", TaskTopic.paused, TaskStartSchema, { containerId: "lost" });
    await pub.flush();
    assert.equal(pub.pending, 0);
    assert.ok(warnings.some((w) => /dropped/.test(w)));
    await pub.close();
  });

  test("close() gives up on an unreachable containerd within its timeout", async () => {
    const pub = new EventPublisher({ address: sockPath(), retryDelayMs: 1000, maxAttempts: 10 });
    pub.publish("default", TaskTopic.resumed, TaskStartSchema, { containerId: "x" });
    const t0 = Date.now();
    await pub.close(100);
    assert.ok(Date.now() - t0 < 1000);
    assert.equal(pub.pending, 0);
    pub.publish("default", TaskTopic.resumed, TaskStartSchema, { containerId: "y" });
    assert.equal(pub.pending, 0, "closed publisher drops");
  });

  test("no TTRPC_ADDRESS: events are dropped without error", async () => {
    const pub = new EventPublisher({ address: "" });
    pub.publish("default", TaskTopic.create, TaskCreateSchema, { containerId: "x" });
    assert.equal(pub.pending, 0);
    await pub.close();
  });
});
