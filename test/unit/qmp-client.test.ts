import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { once } from "node:events";
import { QmpClient, type QmpEvent } from "../../src/hypervisor/qemu/qmp-client.js";
import { HypervisorError } from "../../src/runtime/errors.js";

const dir = mkdtempSync(join(tmpdir(), "hako-qmp-test-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const sockPath = (): string => join(dir, `q${n++}.sock`);

type Handler = (msg: { execute: string; id?: unknown; arguments?: unknown }, reply: (obj: object) => void, conn: Socket) => void;

/** A fake QMP server: greeting, then JSON lines (CRLF-terminated, like QEMU). */
function fakeQmp(path: string, handler: Handler, opts: { greet?: boolean } = {}): Promise<{ server: Server; received: string[] }> {
  const received: string[] = [];
  const server = createServer((conn) => {
    const reply = (obj: object): void => {
      conn.write(JSON.stringify(obj) + "\r\n");
    };
    if (opts.greet !== false) reply({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: "fake" }, capabilities: ["oob"] } });
    let buf = "";
    conn.setEncoding("utf8");
    conn.on("data", (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const msg = JSON.parse(line) as { execute: string; id?: unknown };
        received.push(msg.execute);
        if (msg.execute === "qmp_capabilities") reply({ return: {}, id: msg.id });
        else handler(msg, reply, conn);
      }
    });
    conn.on("error", () => {});
  });
  return new Promise((resolve) => server.listen(path, () => resolve({ server, received })));
}

test("connects, negotiates capabilities, executes commands with ids", async () => {
  const p = sockPath();
  const { server, received } = await fakeQmp(p, (msg, reply) => {
    if (msg.execute === "query-status") reply({ return: { status: "running", running: true }, id: msg.id });
    else if (msg.execute === "echo") reply({ return: msg.arguments, id: msg.id });
  });
  const qmp = await QmpClient.connect({ socketPath: p, id: "sb1", deadline: Date.now() + 2000 });
  assert.equal(qmp.greeting?.QMP.version?.qemu?.major, 7);
  // Two commands in flight at once resolve by id.
  const [st, echo] = await Promise.all([qmp.execute<{ status: string }>("query-status"), qmp.execute("echo", { a: 1 })]);
  assert.equal(st.status, "running");
  assert.deepEqual(echo, { a: 1 });
  assert.deepEqual(received, ["qmp_capabilities", "query-status", "echo"]);
  qmp.close();
  assert.equal(qmp.connected, false);
  server.close();
});

test("retries until the socket appears", async () => {
  const p = sockPath();
  const started = Date.now();
  setTimeout(() => void fakeQmp(p, () => {}).then(({ server }) => setTimeout(() => server.close(), 500)), 150);
  const qmp = await QmpClient.connect({ socketPath: p, id: "sb2", deadline: Date.now() + 3000, retryMs: 10 });
  assert.ok(Date.now() - started >= 140);
  qmp.close();
});

test("gives up at the deadline with a HypervisorError naming the sandbox and socket", async () => {
  const p = sockPath();
  await assert.rejects(QmpClient.connect({ socketPath: p, id: "sb3", deadline: Date.now() + 100 }), (err: unknown) => {
    assert.ok(err instanceof HypervisorError);
    assert.equal(err.id, "sb3");
    assert.match(err.message, /did not accept connections in time/);
    assert.ok(err.message.includes(p));
    return true;
  });
});

test("abort signal stops the retry loop", async () => {
  const ac = new AbortController();
  setTimeout(() => ac.abort(new Error("qemu exited")), 50);
  const t0 = Date.now();
  await assert.rejects(QmpClient.connect({ socketPath: sockPath(), id: "sb4", deadline: Date.now() + 5000, signal: ac.signal }), /gave up connecting/);
  assert.ok(Date.now() - t0 < 1000);
});

test("no greeting before the deadline is an error", async () => {
  const p = sockPath();
  const { server } = await fakeQmp(p, () => {}, { greet: false });
  await assert.rejects(QmpClient.connect({ socketPath: p, id: "sb5", deadline: Date.now() + 150 }), /no QMP greeting/);
  server.close();
});

test("QMP errors carry QEMU's desc; events are emitted by name", async () => {
  const p = sockPath();
  const { server } = await fakeQmp(p, (msg, reply) => {
    if (msg.execute === "bogus") reply({ error: { class: "CommandNotFound", desc: "The command bogus has not been found" }, id: msg.id });
    if (msg.execute === "stop") {
      reply({ event: "STOP", timestamp: { seconds: 1, microseconds: 2 } });
      reply({ return: {}, id: msg.id });
    }
  });
  const qmp = await QmpClient.connect({ socketPath: p, id: "sb6", deadline: Date.now() + 2000 });
  await assert.rejects(qmp.execute("bogus"), (err: unknown) => {
    assert.ok(err instanceof HypervisorError);
    assert.match(err.message, /QMP command bogus failed: The command bogus has not been found \(CommandNotFound\)/);
    return true;
  });
  const seen: string[] = [];
  qmp.on("event", (ev: QmpEvent) => seen.push(ev.event));
  const stopEv = once(qmp, "STOP");
  await qmp.execute("stop");
  const [ev] = (await stopEv) as [QmpEvent];
  assert.equal(ev.timestamp?.seconds, 1);
  assert.deepEqual(seen, ["STOP"]);
  qmp.close();
  server.close();
});

test("pending commands fail when the server closes; later commands fail at once", async () => {
  const p = sockPath();
  const { server } = await fakeQmp(p, (msg, reply, conn) => {
    if (msg.execute === "quit") {
      reply({ event: "SHUTDOWN", data: { guest: false, reason: "host-qmp-quit" } });
      conn.destroy();
    }
  });
  const qmp = await QmpClient.connect({ socketPath: p, id: "sb7", deadline: Date.now() + 2000 });
  const closed = once(qmp, "close");
  const shutdown = once(qmp, "SHUTDOWN");
  await assert.rejects(qmp.execute("quit"), /QMP command quit did not complete/);
  await shutdown;
  await closed;
  await assert.rejects(qmp.execute("query-status"), /cannot run QMP command query-status/);
  server.close();
});

test("a command without a reply times out", async () => {
  const p = sockPath();
  const { server } = await fakeQmp(p, () => {});
  const qmp = await QmpClient.connect({ socketPath: p, id: "sb8", deadline: Date.now() + 2000 });
  await assert.rejects(qmp.execute("query-status", undefined, { timeoutMs: 50 }), /got no reply within 50 ms/);
  qmp.close();
  server.close();
});
