// Spare shim daemons (src/shim/spare.ts) without containerd or a VM: the
// request a spare accepts, what `ps` shows once it serves, and its life
// tied to containerd's ttRPC connection.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseShimFlags } from "../../src/shim/flags.js";
import { readHandOver, readySpares, servingTitle, spareDir } from "../../src/shim/spare.js";

const root = mkdtempSync(join(tmpdir(), "hako-test-spare-"));
after(() => rmSync(root, { recursive: true, force: true }));

const CONTAINERD = "/run/containerd/containerd.sock";
const spareFlags = parseShimFlags(["-namespace", "k8s.io", "-address", CONTAINERD, "-id", "hako-spare", "spare", "1"], "/");

function request(name: string, argv: string[], options?: string): string {
  const file = join(root, name);
  writeFileSync(file, argv.map((a) => `${a}\0`).join(""));
  if (options !== undefined) writeFileSync(`${file}.opts`, options);
  return file;
}

const SERVE = ["-namespace", "k8s.io", "-address", CONTAINERD, "-id", "pod1", "-bundle", "/b/pod1", "-socket", "unix:///run/containerd/s/abc", "serve"];

test("a spare takes a serve request of its own containerd and namespace, with the options", () => {
  const h = readHandOver(request("ok", SERVE, "opts-bytes"), spareFlags);
  assert.equal(h.flags.action, "serve");
  assert.equal(h.flags.id, "pod1");
  assert.equal(h.flags.bundle, "/b/pod1");
  assert.equal(Buffer.from(h.runtimeOptions).toString(), "opts-bytes");
  assert.equal(readHandOver(request("no-opts", SERVE), spareFlags).runtimeOptions.length, 0, "no options file: the default configuration");
});

test("a spare refuses requests for another namespace or containerd, other actions, or no socket", () => {
  const swap = (i: number, v: string): string[] => SERVE.map((a, j) => (j === i ? v : a));
  assert.throws(() => readHandOver(request("ns", swap(1, "default")), spareFlags), /namespace default/);
  assert.throws(() => readHandOver(request("addr", swap(3, "/other.sock")), spareFlags), /other\.sock/);
  assert.throws(() => readHandOver(request("action", swap(10, "delete")), spareFlags), /not serve/);
  assert.throws(() => readHandOver(request("nosock", [...SERVE.slice(0, 8), "serve"]), spareFlags), /no -socket/);
});

test("what ps shows for a spare that serves a pod: node, the shim, its namespace, address and pod id", () => {
  const title = servingTitle(parseShimFlags(SERVE, "/"));
  assert.match(title, / -namespace k8s\.io -address \/run\/containerd\/containerd\.sock -id pod1 serve$/);
  assert.ok(title.length <= 256, "fits the room a spare's blank argument reserves");
});

test("readySpares lists the waiting spares' pids only", () => {
  const dir = join(root, "spares");
  mkdirSync(dir);
  for (const f of ["ready-12", "ready-345", "claimed-7", "slot-0.pid", "req-7", "ready-x"]) writeFileSync(join(dir, f), "");
  assert.deepEqual(readySpares(dir).sort((a, b) => a - b), [12, 345]);
  assert.deepEqual(readySpares(join(root, "absent")), []);
});

test("a spare waits with its fifo and slot, and goes, files and directory, when containerd's ttRPC connection closes", async () => {
  const sockDir = join(root, "s");
  mkdirSync(sockDir);
  const ttrpc = join(root, "ttrpc.sock");
  const conns: net.Socket[] = [];
  const server = net.createServer((c) => conns.push(c));
  await new Promise<void>((r) => server.listen(ttrpc, r));
  const main = join(import.meta.dirname, "..", "..", "src", "shim", "main.ts");
  const child = spawn(process.execPath, ["--import", "tsx", main, "-namespace", "k8s.io", "-address", CONTAINERD, "-id", "hako-spare", "spare", "1"], {
    env: { ...process.env, TTRPC_ADDRESS: ttrpc, HAKO_SHIM_SOCKET_DIR: sockDir },
    stdio: "ignore",
  });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  try {
    const dir = spareDir(CONTAINERD, "k8s.io", sockDir);
    for (let i = 0; i < 300 && !readySpares(dir).includes(child.pid!); i++) await sleep(20);
    assert.deepEqual(readySpares(dir), [child.pid], "the spare waits");
    assert.ok(existsSync(join(dir, "slot-0.pid")), "in slot 0");
    for (let i = 0; i < 100 && conns.length === 0; i++) await sleep(20);
    assert.equal(conns.length, 1, "it holds a connection to containerd's ttRPC socket");
    server.close();
    for (const c of conns) c.destroy();
    assert.equal(await Promise.race([exited, sleep(5000, "still running")]), 0, "it exits when containerd goes");
    assert.equal(existsSync(dir), false, "and leaves no fifo, slot or directory");
    assert.deepEqual(readdirSync(sockDir), []);
  } finally {
    child.kill("SIGKILL");
    server.close();
  }
});
