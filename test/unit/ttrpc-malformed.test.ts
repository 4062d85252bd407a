import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  Code,
  FrameDecoder,
  MessageType,
  TtrpcClient,
  TtrpcError,
  TtrpcServer,
  encodeFrame,
  encodeHeader,
  type FrameEvent,
} from "../../src/protocols/ttrpc/index.js";
import { RequestSchema, ResponseSchema, type Response } from "../../src/protocols/gen/ttrpc/ttrpc_pb.js";

let dir = "";
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "hako-ttrpc-bad-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A raw socket speaking frames by hand. */
class RawConn {
  readonly sock: net.Socket;
  readonly closed: Promise<void>;
  private readonly decoder = new FrameDecoder();
  private readonly frames: FrameEvent[] = [];
  private waiter: (() => void) | undefined;

  private constructor(sock: net.Socket) {
    this.sock = sock;
    this.closed = new Promise((resolve) => sock.once("close", () => resolve()));
    sock.on("error", () => {});
    sock.on("data", (chunk: Buffer) => {
      for (const ev of this.decoder.push(chunk)) {
        if (ev.kind === "frame") this.frames.push(ev);
      }
      this.waiter?.();
    });
  }

  static connect(p: string): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(p);
      s.once("error", reject);
      s.once("connect", () => {
        s.off("error", reject);
        resolve(new RawConn(s));
      });
    });
  }

  write(b: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => this.sock.write(b, (err) => (err ? reject(err) : resolve())));
  }

  async next(timeoutMs = 3000): Promise<FrameEvent> {
    const deadline = Date.now() + timeoutMs;
    while (this.frames.length === 0) {
      if (Date.now() > deadline) throw new Error("timed out waiting for a frame");
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        setTimeout(resolve, 50);
      });
    }
    return this.frames.shift() as FrameEvent;
  }

  async response(): Promise<{ streamId: number; resp: Response }> {
    const f = await this.next();
    assert.equal(f.type, MessageType.Response);
    return { streamId: f.streamId, resp: fromBinary(ResponseSchema, f.payload) };
  }
}

function request(service: string, method: string, payload: Uint8Array = new Uint8Array()): Uint8Array {
  return toBinary(RequestSchema, create(RequestSchema, { service, method, payload }));
}

describe("server facing malformed input", () => {
  let server: TtrpcServer;
  let sock = "";
  before(async () => {
    server = new TtrpcServer();
    server.registerRaw("test.Echo", "Echo", (p) => p);
    sock = path.join(dir, "server.sock");
    await server.listen(sock);
  });
  after(async () => {
    await server.close();
  });

  test("even stream id is INVALID_ARGUMENT", async () => {
    const c = await RawConn.connect(sock);
    await c.write(encodeFrame(2, MessageType.Request, 0, request("test.Echo", "Echo", Buffer.from("x"))));
    const { streamId, resp } = await c.response();
    assert.equal(streamId, 2);
    assert.equal(resp.status?.code, Code.INVALID_ARGUMENT);
    // The connection still works.
    await c.write(encodeFrame(3, MessageType.Request, 0, request("test.Echo", "Echo", Buffer.from("y"))));
    const ok = await c.response();
    assert.equal(ok.streamId, 3);
    assert.equal(ok.resp.status, undefined);
    assert.equal(Buffer.from(ok.resp.payload).toString(), "y");
    c.sock.destroy();
  });

  test("garbage request envelope is INVALID_ARGUMENT on that stream", async () => {
    const c = await RawConn.connect(sock);
    await c.write(encodeFrame(5, MessageType.Request, 0, Buffer.from([0xff, 0xff, 0xff, 0xff])));
    await c.write(encodeFrame(7, MessageType.Request, 0, Buffer.from([0x0f, 0x01])));
    const a = await c.response();
    const b = await c.response();
    assert.deepEqual([a.streamId, b.streamId], [5, 7]);
    assert.equal(a.resp.status?.code, Code.INVALID_ARGUMENT);
    assert.equal(b.resp.status?.code, Code.INVALID_ARGUMENT);
    c.sock.destroy();
  });

  test("oversize request (5 MiB declared and sent) is RESOURCE_EXHAUSTED; the connection keeps serving", async () => {
    const c = await RawConn.connect(sock);
    const size = 5 << 20;
    await c.write(encodeHeader(size, 9, MessageType.Request, 0));
    const chunk = Buffer.alloc(256 * 1024, 0x61);
    for (let sent = 0; sent < size; sent += chunk.length) {
      await c.write(chunk.subarray(0, Math.min(chunk.length, size - sent)));
    }
    await c.write(encodeFrame(11, MessageType.Request, 0, request("test.Echo", "Echo", Buffer.from("next"))));
    const a = await c.response();
    assert.equal(a.streamId, 9);
    assert.equal(a.resp.status?.code, Code.RESOURCE_EXHAUSTED);
    const b = await c.response();
    assert.equal(b.streamId, 11);
    assert.equal(b.resp.status, undefined);
    assert.equal(Buffer.from(b.resp.payload).toString(), "next");
    c.sock.destroy();
  });

  test("unsupported message types are ignored", async () => {
    const c = await RawConn.connect(sock);
    await c.write(encodeFrame(13, MessageType.Data, 0, Buffer.from("data")));
    await c.write(encodeFrame(15, MessageType.Response, 0, Buffer.from("resp")));
    await c.write(encodeFrame(17, MessageType.Request, 0, request("test.Echo", "Echo", Buffer.from("z"))));
    const r = await c.response();
    assert.equal(r.streamId, 17);
    assert.equal(Buffer.from(r.resp.payload).toString(), "z");
    c.sock.destroy();
  });

  test("truncated header then end: connection closes cleanly, new connections still served", async () => {
    const c = await RawConn.connect(sock);
    await c.write(Buffer.from([0, 0, 0, 5, 0]));
    c.sock.end();
    await c.closed;
    for (let i = 0; i < 100 && server.connectionCount > 0; i++) await sleep(10);
    assert.equal(server.connectionCount, 0);

    const c2 = await RawConn.connect(sock);
    const frame = encodeFrame(1, MessageType.Request, 0, request("test.Echo", "Echo", Buffer.from("p")));
    await c2.write(frame.subarray(0, frame.length - 3));
    c2.sock.end();
    await c2.closed;

    const client = await TtrpcClient.connect(sock);
    assert.equal(Buffer.from(await client.call("test.Echo", "Echo", Buffer.from("alive"))).toString(), "alive");
    client.close();
    await client.closed;
  });
});

describe("client facing a misbehaving server", () => {
  let fake: net.Server;
  let sock = "";
  let behave: (s: net.Socket, streamId: number) => void = () => {};
  const sockets = new Set<net.Socket>();
  before(async () => {
    sock = path.join(dir, "fake.sock");
    fake = net.createServer((s) => {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
      const d = new FrameDecoder();
      s.on("data", (chunk: Buffer) => {
        for (const ev of d.push(chunk)) if (ev.kind === "frame") behave(s, ev.streamId);
      });
    });
    await new Promise<void>((resolve) => fake.listen(sock, resolve));
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => fake.close(() => resolve()));
  });

  async function expectCode(p: Promise<unknown>, code: Code): Promise<void> {
    await assert.rejects(p, (err: unknown) => {
      assert.ok(err instanceof TtrpcError);
      assert.equal(err.code, code, `got ${Code[err.code]}: ${err.message}`);
      return true;
    });
  }

  test("oversize response fails that call with RESOURCE_EXHAUSTED, others continue", async () => {
    behave = (s, id) => {
      if (id === 1) {
        s.write(encodeHeader(5 << 20, id, MessageType.Response, 0));
        s.write(Buffer.alloc(5 << 20));
      } else {
        const ok = toBinary(ResponseSchema, create(ResponseSchema, { payload: Buffer.from("fine") }));
        s.write(encodeFrame(id, MessageType.Response, 0, ok));
      }
    };
    const client = await TtrpcClient.connect(sock);
    const first = client.call("a", "b", new Uint8Array());
    await expectCode(first, Code.RESOURCE_EXHAUSTED);
    assert.equal(Buffer.from(await client.call("a", "b", new Uint8Array())).toString(), "fine");
    client.close();
  });

  test("pending calls are rejected with UNAVAILABLE when the server drops the connection mid-frame", async () => {
    behave = (s, id) => {
      if (id === 3) {
        s.end(Buffer.from([0, 0, 0, 9, 0, 0]));
      }
    };
    const client = await TtrpcClient.connect(sock);
    const calls = [1, 2, 3].map(() => client.call("a", "b", new Uint8Array()));
    for (const c of calls) await expectCode(c, Code.UNAVAILABLE);
    await client.closed;
    assert.equal(client.isClosed, true);
  });

  test("undecodable response envelope fails only that call", async () => {
    behave = (s, id) => {
      if (id === 1) s.write(encodeFrame(id, MessageType.Response, 0, Buffer.from([0x0f])));
      else s.write(encodeFrame(id, MessageType.Response, 0, new Uint8Array()));
    };
    const client = await TtrpcClient.connect(sock);
    await expectCode(client.call("a", "b", new Uint8Array()), Code.INTERNAL);
    assert.equal((await client.call("a", "b", new Uint8Array())).length, 0);
    client.close();
  });
});
