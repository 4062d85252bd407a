import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { lstat, mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import {
  Code,
  NAMESPACE_METADATA_KEY,
  TtrpcClient,
  TtrpcError,
  TtrpcServer,
  createServiceClient,
  type CallContext,
} from "../../src/protocols/ttrpc/index.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../src/protocols/gen/hako/agent/v1/health_pb.js";

let dir = "";
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "hako-ttrpc-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let sockCounter = 0;
function sockPath(): string {
  sockCounter += 1;
  return path.join(dir, `s${sockCounter}.sock`);
}

async function expectCode(p: Promise<unknown>, code: Code, message?: string | RegExp): Promise<TtrpcError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof TtrpcError, `expected TtrpcError, got ${String(err)}`);
    assert.equal(err.code, code, `expected code ${Code[code]}, got ${Code[err.code]}: ${err.message}`);
    if (typeof message === "string") assert.equal(err.message, message);
    else if (message !== undefined) assert.match(err.message, message);
    return err;
  }
  assert.fail(`expected rejection with ${Code[code]}`);
}

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

interface Fixture {
  server: TtrpcServer;
  client: TtrpcClient;
  socketPath: string;
  lastCtx: { value?: CallContext };
  aborted: Map<string, unknown>;
  close(): Promise<void>;
}

async function setup(): Promise<Fixture> {
  const server = new TtrpcServer();
  const lastCtx: { value?: CallContext } = {};
  const aborted = new Map<string, unknown>();
  server.register(Health, {
    check(req, ctx) {
      lastCtx.value = ctx;
      if (req.service === "missing") {
        throw Object.assign(new Error(`container ${req.service} not found`), { code: Code.NOT_FOUND });
      }
      return { status: HealthCheckResponse_ServingStatus.SERVING };
    },
    async version(req, ctx) {
      lastCtx.value = ctx;
      return { agentVersion: "1.2.3", protocolVersion: `p-${req.service}` };
    },
  });
  server.registerRaw("test.Echo", "Echo", (payload) => payload);
  server.registerRaw("test.Echo", "Delay", async (payload) => {
    const ms = Number(dec(payload).split(":")[1]);
    await sleep(ms);
    return payload;
  });
  server.registerRaw("test.Echo", "Block", (payload, ctx) => {
    const key = dec(payload);
    return new Promise<Uint8Array>((_resolve, reject) => {
      ctx.signal.addEventListener("abort", () => {
        aborted.set(key, ctx.signal.reason);
        reject(ctx.signal.reason);
      });
    });
  });
  server.registerRaw("test.Echo", "Fail", (payload) => {
    const what = dec(payload);
    if (what === "grpc") throw Object.assign(new Error("no permission"), { grpcCode: 7 });
    if (what === "errno") throw Object.assign(new Error("ENOENT: nope"), { code: "ENOENT" });
    if (what === "ttrpc") throw new TtrpcError(Code.FAILED_PRECONDITION, "not ready");
    throw new Error("plain failure");
  });
  const socketPath = sockPath();
  await server.listen(socketPath);
  const client = await TtrpcClient.connect(socketPath);
  return {
    server,
    client,
    socketPath,
    lastCtx,
    aborted,
    async close() {
      client.close();
      await server.close();
    },
  };
}

describe("ttrpc client/server over unix sockets", () => {
  let f: Fixture;
  before(async () => {
    f = await setup();
  });
  after(async () => {
    await f.close();
  });

  test("typed round trip with the Health service", async () => {
    const health = createServiceClient(Health, f.client);
    const res = await health.check({ service: "agent" });
    assert.equal(res.status, HealthCheckResponse_ServingStatus.SERVING);
    assert.equal(f.lastCtx.value?.service, "hako.agent.v1.Health");
    assert.equal(f.lastCtx.value?.method, "Check");
    assert.equal((f.lastCtx.value?.streamId ?? 0) % 2, 1);
    const ver = await health.version({ service: "x" });
    assert.equal(ver.agentVersion, "1.2.3");
    assert.equal(ver.protocolVersion, "p-x");
  });

  test("raw round trip and 3 MiB payload byte-identical", async () => {
    assert.equal(dec(await f.client.call("test.Echo", "Echo", enc("hi"))), "hi");
    const big = new Uint8Array(3 * 1024 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 10)) & 0xff;
    const back = await f.client.call("test.Echo", "Echo", big);
    assert.equal(back.length, big.length);
    assert.ok(Buffer.from(back).equals(Buffer.from(big)));
  });

  test("50 concurrent calls complete out of order", async () => {
    const order: number[] = [];
    const calls = Array.from({ length: 50 }, (_, i) => {
      const delay = (50 - i) * 3;
      return f.client.call("test.Echo", "Delay", enc(`${i}:${delay}`)).then((r) => {
        order.push(i);
        return dec(r);
      });
    });
    const results = await Promise.all(calls);
    results.forEach((r, i) => assert.equal(r, `${i}:${(50 - i) * 3}`));
    assert.equal(order[0], 49, "shortest delay finishes first");
    assert.equal(order[49], 0, "longest delay finishes last");
  });

  test("metadata is delivered, including the containerd namespace", async () => {
    const health = createServiceClient(Health, f.client, { metadata: { a: "1" } });
    await health.check({}, { metadata: { [NAMESPACE_METADATA_KEY]: "k8s.io", b: "2" } });
    assert.deepEqual(f.lastCtx.value?.metadata, { a: "1", [NAMESPACE_METADATA_KEY]: "k8s.io", b: "2" });
    assert.equal(f.lastCtx.value?.deadline, undefined);
  });

  test("timeout: client gets DEADLINE_EXCEEDED and the server handler is aborted", async () => {
    const started = Date.now();
    await expectCode(f.client.call("test.Echo", "Block", enc("t1"), { timeoutMs: 150 }), Code.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - started >= 140);
    for (let i = 0; i < 100 && !f.aborted.has("t1"); i++) await sleep(10);
    const reason = f.aborted.get("t1");
    assert.ok(reason instanceof TtrpcError);
    assert.equal(reason.code, Code.DEADLINE_EXCEEDED);
    assert.equal(f.client.pendingCount, 0);
  });

  test("a blocked handler does not block other calls", async () => {
    const ac = new AbortController();
    const blocked = f.client.call("test.Echo", "Block", enc("b1"), { signal: ac.signal });
    const ok = await f.client.call("test.Echo", "Echo", enc("still-served"));
    assert.equal(dec(ok), "still-served");
    ac.abort();
    await expectCode(blocked, Code.CANCELLED);
  });

  test("handler error codes are mapped", async () => {
    const health = createServiceClient(Health, f.client);
    await expectCode(health.check({ service: "missing" }), Code.NOT_FOUND, "container missing not found");
    await expectCode(f.client.call("test.Echo", "Fail", enc("grpc")), Code.PERMISSION_DENIED, "no permission");
    await expectCode(f.client.call("test.Echo", "Fail", enc("errno")), Code.UNKNOWN, "ENOENT: nope");
    await expectCode(f.client.call("test.Echo", "Fail", enc("ttrpc")), Code.FAILED_PRECONDITION, "not ready");
    await expectCode(f.client.call("test.Echo", "Fail", enc("plain")), Code.UNKNOWN, "plain failure");
  });

  test("unknown service and unknown method are UNIMPLEMENTED", async () => {
    await expectCode(f.client.call("no.Such", "Thing", new Uint8Array()), Code.UNIMPLEMENTED, /no\.Such/);
    await expectCode(f.client.call("hako.agent.v1.Health", "Nope", new Uint8Array()), Code.UNIMPLEMENTED, /Nope/);
  });

  test("garbage payload for a known method is INVALID_ARGUMENT", async () => {
    await expectCode(f.client.call("hako.agent.v1.Health", "Check", Uint8Array.from([0x0f])), Code.INVALID_ARGUMENT);
    await expectCode(
      f.client.call("hako.agent.v1.Health", "Check", Uint8Array.from([0x0a, 0xff, 0xff])),
      Code.INVALID_ARGUMENT,
    );
  });

  test("requests above the maximum fail locally with RESOURCE_EXHAUSTED", async () => {
    await expectCode(f.client.call("test.Echo", "Echo", new Uint8Array(5 << 20)), Code.RESOURCE_EXHAUSTED);
    assert.equal(dec(await f.client.call("test.Echo", "Echo", enc("after"))), "after");
  });

  test("already-aborted signal fails with CANCELLED", async () => {
    await expectCode(f.client.call("test.Echo", "Echo", enc("x"), { signal: AbortSignal.abort() }), Code.CANCELLED);
  });
});

describe("connection lifecycle", () => {
  test("pending calls fail with UNAVAILABLE when the server closes; handlers are aborted", async () => {
    const f = await setup();
    const blocked = f.client.call("test.Echo", "Block", enc("c1"));
    const blocked2 = f.client.call("test.Echo", "Block", enc("c2"));
    for (let i = 0; i < 100 && f.server.connectionCount === 0; i++) await sleep(5);
    await sleep(20);
    let closeEvent: unknown;
    f.client.on("close", (e) => {
      closeEvent = e;
    });
    await f.server.close();
    await expectCode(blocked, Code.UNAVAILABLE);
    await expectCode(blocked2, Code.UNAVAILABLE);
    await f.client.closed;
    assert.ok(closeEvent instanceof TtrpcError);
    assert.equal(f.client.isClosed, true);
    const r1 = f.aborted.get("c1");
    assert.ok(r1 instanceof TtrpcError);
    assert.equal(r1.code, Code.CANCELLED);
    assert.ok(f.aborted.has("c2"));
    await expectCode(f.client.call("test.Echo", "Echo", enc("x")), Code.UNAVAILABLE);
    f.client.close();
  });

  test("client.close() rejects pending calls with UNAVAILABLE", async () => {
    const f = await setup();
    const blocked = f.client.call("test.Echo", "Block", enc("d1"));
    await sleep(20);
    f.client.close();
    await expectCode(blocked, Code.UNAVAILABLE);
    for (let i = 0; i < 100 && !f.aborted.has("d1"); i++) await sleep(10);
    assert.ok(f.aborted.has("d1"), "server handler aborted after client disconnect");
    await f.server.close();
  });

  test("works over a {readable, writable} stream pair", async () => {
    const toServer = new PassThrough();
    const toClient = new PassThrough();
    const server = new TtrpcServer();
    server.register(Health, {
      check: () => ({ status: HealthCheckResponse_ServingStatus.NOT_SERVING }),
      version: (req) => ({ agentVersion: req.service }),
    });
    const handle = server.serve({ readable: toServer, writable: toClient });
    const client = new TtrpcClient({ readable: toClient, writable: toServer });
    const health = createServiceClient(Health, client);
    const [a, b] = await Promise.all([health.check({}), health.version({ service: "v9" })]);
    assert.equal(a.status, HealthCheckResponse_ServingStatus.NOT_SERVING);
    assert.equal(b.agentVersion, "v9");
    client.close();
    await handle.closed;
    await server.close();
  });

  test("listen removes a stale socket file but refuses a live one or a regular file", async () => {
    const p = sockPath();
    // A live listener on the path: refused.
    const live = net.createServer();
    await new Promise<void>((resolve) => live.listen(p, resolve));
    const s1 = new TtrpcServer();
    await assert.rejects(s1.listen(p), (err: NodeJS.ErrnoException) => err.code === "EADDRINUSE");
    await new Promise<void>((resolve) => live.close(() => resolve()));

    // A stale socket file left by a killed process: removed and reused.
    const script = `require("net").createServer().listen(${JSON.stringify(p)}, () => process.kill(process.pid, "SIGKILL"))`;
    spawnSync(process.execPath, ["-e", script], { stdio: "ignore" });
    assert.ok((await lstat(p)).isSocket(), "stale socket file exists");
    const s2 = new TtrpcServer();
    await s2.listen(p);
    const c = await TtrpcClient.connect(p);
    await expectCode(c.call("x", "y", new Uint8Array()), Code.UNIMPLEMENTED);
    c.close();
    await s2.close();

    const regular = path.join(dir, "regular.sock");
    await writeFile(regular, "not a socket");
    const s3 = new TtrpcServer();
    await assert.rejects(s3.listen(regular), (err: NodeJS.ErrnoException) => err.code === "EADDRINUSE");
  });
});
