// start / delete / version of containerd-shim-hako-v2, plus wire checks of the
// generated containerd messages against hand-encoded protobuf.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AnySchema } from "@bufbuild/protobuf/wkt";
import { MetricsSchema } from "../../src/protocols/gen/containerd/cgroups/v1/metrics_pb.js";
import {
  CreateTaskRequestSchema,
  DeleteResponseSchema,
  StateResponseSchema,
  Task,
} from "../../src/protocols/gen/containerd/runtime/task/v2/shim_pb.js";
import { Status } from "../../src/protocols/gen/containerd/types/task_pb.js";
import { OptionsSchema } from "../../src/protocols/gen/runtimeoptions/v1/api_pb.js";
import { shimSocketAddress, socketPathOf } from "../../src/shim/address.js";
import { deleteResponseBytes } from "../../src/shim/delete.js";
import { parseShimFlags } from "../../src/shim/flags.js";
import { decodeRuntimeOptions, startShim } from "../../src/shim/start.js";
import { pidAlive as alive } from "../../src/runtime/state.js";

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const mainTs = path.join(root, "src", "shim", "main.ts");
const CTRD = "/run/containerd/containerd.sock";

let dir = "";
let sockDir = "";
const savedSockDir = process.env.HAKO_SHIM_SOCKET_DIR;
const daemonPids = new Set<number>();
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "hako-shim-cmd-"));
  sockDir = path.join(dir, "s");
  process.env.HAKO_SHIM_SOCKET_DIR = sockDir;
  // A stand-in for `serve`: listens on -socket, records argv/env/pid, prints to stdout.
  await writeFile(
    path.join(dir, "fake-daemon.mjs"),
    `import net from "node:net"; import fs from "node:fs"; import path from "node:path";
const argv = process.argv.slice(2);
const sock = argv[argv.indexOf("-socket") + 1].replace("unix://", "");
fs.writeFileSync(path.join(process.cwd(), "daemon.json"), JSON.stringify({ argv, pid: process.pid, config: process.env.HAKO_CONFIG ?? null, cwd: process.cwd() }));
console.log("daemon says hello");
const mode = process.env.FAKE_MODE ?? "listen";
if (mode === "exit") process.exit(3);
if (mode === "listen") { fs.mkdirSync(path.dirname(sock), { recursive: true }); net.createServer((c) => c.destroy()).listen(sock); }
setInterval(() => {}, 1000);
process.on("SIGTERM", () => { try { fs.rmSync(sock, { force: true }); } catch {} process.exit(0); });
`,
  );
});
after(async () => {
  for (const pid of daemonPids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
  if (savedSockDir === undefined) delete process.env.HAKO_SHIM_SOCKET_DIR;
  else process.env.HAKO_SHIM_SOCKET_DIR = savedSockDir;
  await rm(dir, { recursive: true, force: true });
});

async function bundle(name: string, annotations: Record<string, string> = {}): Promise<string> {
  const b = path.join(dir, name);
  await rm(b, { recursive: true, force: true });
  await import("node:fs/promises").then((fsp) => fsp.mkdir(path.join(b, "rootfs"), { recursive: true }));
  await writeFile(path.join(b, "config.json"), JSON.stringify({ ociVersion: "1.0.2", annotations }));
  return b;
}

function flagsFor(id: string, b: string, ns = "k8s.io"): ReturnType<typeof parseShimFlags> {
  return parseShimFlags(["-namespace", ns, "-address", CTRD, "-publish-binary", "/usr/bin/containerd", "-id", id, "-bundle", b, "start"]);
}


const optionsAny = (configPath: string): Uint8Array =>
  toBinary(
    AnySchema,
    create(AnySchema, {
      typeUrl: "runtimeoptions.v1.Options",
      value: toBinary(OptionsSchema, create(OptionsSchema, { typeUrl: "", configPath })),
    }),
  );

describe("runtime options on start's stdin", () => {
  test("decodes runtimeoptions.v1.Options; ignores empty/other/garbage", async () => {
    assert.deepEqual(await decodeRuntimeOptions(optionsAny("/etc/hako/c.toml")), { typeUrl: "", configPath: "/etc/hako/c.toml" });
    assert.equal(await decodeRuntimeOptions(new Uint8Array(0)), undefined);
    const other = toBinary(AnySchema, create(AnySchema, { typeUrl: "containerd.runc.v1.Options", value: new Uint8Array([8, 1]) }));
    assert.equal(await decodeRuntimeOptions(other), undefined);
    assert.equal(await decodeRuntimeOptions(new Uint8Array([0xff, 0xff, 0xff])), undefined);
  });
});

describe("start", () => {
  const fakeDaemon = (): { command: string; args: string[] } => ({ command: process.execPath, args: [path.join(dir, "fake-daemon.mjs")] });

  test("spawns the daemon detached, waits for its socket, writes address; a pod member reuses it", async () => {
    const sb = await bundle("sandbox1", { "io.kubernetes.cri.sandbox-id": "sandbox1" });
    await writeFile(path.join(sb, "log"), ""); // stands in for containerd's log fifo
    const res = await startShim(flagsFor("sandbox1", sb), { stdin: optionsAny("/etc/hako/x.toml"), daemon: fakeDaemon() });
    assert.ok(res.daemonPid !== undefined);
    daemonPids.add(res.daemonPid);
    assert.equal(res.reused, false);
    assert.equal(res.address, shimSocketAddress(CTRD, "k8s.io", "sandbox1", sockDir));
    assert.match(res.address, /^unix:\/\/\/.*\/[0-9a-f]{64}$/);
    assert.equal(await readFile(path.join(sb, "address"), "utf8"), res.address);
    const info = JSON.parse(await readFile(path.join(sb, "daemon.json"), "utf8")) as { argv: string[]; pid: number; config: string; cwd: string };
    assert.equal(info.pid, res.daemonPid);
    assert.equal(info.config, "/etc/hako/x.toml", "config_path passed as HAKO_CONFIG");
    assert.equal(info.cwd, sb);
    assert.equal(info.argv.at(-1), "serve");
    const passed = parseShimFlags(info.argv);
    assert.equal(passed.socket, res.address);
    assert.equal(passed.id, "sandbox1");
    assert.equal(passed.namespace, "k8s.io");
    assert.equal(passed.bundle, sb);
    assert.match(await readFile(path.join(sb, "log"), "utf8"), /daemon says hello/, "daemon output goes to the log");

    // A container of the same pod: no new daemon, same address in its own bundle.
    const c = await bundle("ctr1", { "io.kubernetes.cri.sandbox-id": "sandbox1" });
    const res2 = await startShim(flagsFor("ctr1", c), { stdin: new Uint8Array(0), daemon: fakeDaemon() });
    assert.equal(res2.reused, true);
    assert.equal(res2.daemonPid, undefined);
    assert.equal(res2.address, res.address);
    assert.equal(await readFile(path.join(c, "address"), "utf8"), res.address);
    assert.equal(existsSync(path.join(c, "daemon.json")), false);

    process.kill(res.daemonPid, "SIGTERM");
  });

  test("a log fifo without reader does not block start", { skip: spawnSync("mkfifo", ["--version"]).status !== 0 }, async () => {
    const b = await bundle("fifo1");
    assert.equal(spawnSync("mkfifo", [path.join(b, "log")]).status, 0);
    const res = await startShim(flagsFor("fifo1", b, "default"), { stdin: new Uint8Array(0), daemon: fakeDaemon() });
    assert.ok(res.daemonPid !== undefined);
    daemonPids.add(res.daemonPid);
    assert.equal(res.address, shimSocketAddress(CTRD, "default", "fifo1", sockDir));
    process.kill(res.daemonPid, "SIGTERM");
  });

  test("a daemon that exits fails start fast", async () => {
    const b = await bundle("dies1");
    const t0 = Date.now();
    await assert.rejects(
      startShim(flagsFor("dies1", b), { stdin: new Uint8Array(0), daemon: fakeDaemon(), env: { FAKE_MODE: "exit" } }),
      (err: { code?: unknown; message?: unknown }) => err.code === 14 && /code 3/.test(String(err.message)),
    );
    assert.ok(Date.now() - t0 < 5000);
    assert.equal(existsSync(path.join(b, "address")), false);
  });

  test("a daemon that never listens is killed after the timeout", async () => {
    const b = await bundle("mute1");
    await assert.rejects(
      startShim(flagsFor("mute1", b), { stdin: new Uint8Array(0), daemon: fakeDaemon(), env: { FAKE_MODE: "mute" }, timeoutMs: 400 }),
      /did not listen/,
    );
    const info = JSON.parse(await readFile(path.join(b, "daemon.json"), "utf8")) as { pid: number };
    daemonPids.add(info.pid);
    for (let i = 0; i < 50 && alive(info.pid); i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(alive(info.pid), false, "daemon killed");
  });
});

describe("CLI (src/shim/main.ts)", () => {
  const run = (args: string[], cwd: string, env: Record<string, string> = {}) =>
    spawnSync(process.execPath, ["--import", import.meta.resolve("tsx"), mainTs, ...args], {
      cwd,
      env: { ...process.env, HAKO_SHIM_SOCKET_DIR: sockDir, ...env },
      input: new Uint8Array(0),
      timeout: 30_000,
    });

  test("-v prints one version line", () => {
    const r = run(["-v"], dir);
    assert.equal(r.status, 0, r.stderr.toString());
    assert.match(r.stdout.toString(), /^containerd-shim-hako-v2 version \S+.*\n$/);
  });

  test("usage error exits 2", () => {
    const r = run(["-namespace", "n", "start"], dir);
    assert.equal(r.status, 2);
    assert.match(r.stderr.toString(), /-id/);
  });

  test("start prints only the address when the group's shim is running", async () => {
    const b = await bundle("cli1", { "io.kubernetes.cri.sandbox-id": "podX" });
    const address = shimSocketAddress(CTRD, "k8s.io", "podX", sockDir);
    await import("node:fs/promises").then((fsp) => fsp.mkdir(sockDir, { recursive: true }));
    const srv = net.createServer((c) => c.destroy());
    await new Promise<void>((resolve) => srv.listen(socketPathOf(address), resolve));
    try {
      const r = run(["-namespace", "k8s.io", "-address", CTRD, "-publish-binary", "/usr/bin/containerd", "-id", "cli1", "start"], b);
      assert.equal(r.status, 0, r.stderr.toString());
      assert.equal(r.stdout.toString() + r.stderr.toString(), address, "combined output is exactly the address");
      assert.equal(await readFile(path.join(b, "address"), "utf8"), address);
    } finally {
      await new Promise<void>((resolve) => srv.close(() => resolve()));
    }
  });

  test("delete prints a raw DeleteResponse{0, 137, now} and is idempotent", async () => {
    const b = await bundle("del1");
    for (let i = 0; i < 2; i++) {
      const t0 = Date.now();
      const r = run(["-namespace", "k8s.io", "-address", CTRD, "-publish-binary", "/usr/bin/containerd", "-id", "del1", "-bundle", b, "delete"], b);
      assert.equal(r.status, 0, r.stderr.toString());
      const resp = fromBinary(DeleteResponseSchema, r.stdout);
      assert.equal(resp.pid, 0);
      assert.equal(resp.exitStatus, 137);
      const ms = Number(resp.exitedAt!.seconds) * 1000;
      assert.ok(ms >= t0 - 2000 && ms <= Date.now() + 1000);
    }
    assert.ok(existsSync(path.join(b, "rootfs")), "bundle content is left alone");
  });
});

describe("containerd wire messages", () => {
  test("a hand-encoded CreateTaskRequest decodes", () => {
    const str = (field: number, s: string): number[] => {
      const b = [...Buffer.from(s)];
      return [(field << 3) | 2, b.length, ...b];
    };
    const msg = (field: number, body: number[]): number[] => [(field << 3) | 2, body.length, ...body];
    const mount = [...str(1, "overlay"), ...str(2, "overlay"), ...str(4, "workdir=/w"), ...str(4, "lowerdir=/a:/b")];
    const any = [...str(1, "types.containerd.io/x"), ...msg(2, [1, 2, 3])];
    const bytes = new Uint8Array([
      ...str(1, "c1"),
      ...str(2, "/run/b/c1"),
      ...msg(3, mount),
      0x20, 0x01, // terminal = true
      ...str(5, "/fifo/in"),
      ...str(6, "/fifo/out"),
      ...str(7, ""),
      ...msg(10, any),
    ]);
    const req = fromBinary(CreateTaskRequestSchema, bytes);
    assert.equal(req.id, "c1");
    assert.equal(req.bundle, "/run/b/c1");
    assert.equal(req.rootfs.length, 1);
    assert.equal(req.rootfs[0]!.type, "overlay");
    assert.equal(req.rootfs[0]!.source, "overlay");
    assert.deepEqual(req.rootfs[0]!.options, ["workdir=/w", "lowerdir=/a:/b"]);
    assert.equal(req.terminal, true);
    assert.equal(req.stdin, "/fifo/in");
    assert.equal(req.stdout, "/fifo/out");
    assert.equal(req.stderr, "");
    assert.equal(req.options?.typeUrl, "types.containerd.io/x");
    assert.deepEqual([...req.options!.value], [1, 2, 3]);
  });

  test("StateResponse.status uses field 4 with containerd's enum values", () => {
    const bytes = toBinary(StateResponseSchema, create(StateResponseSchema, { status: Status.STOPPED, exitStatus: 9 }));
    assert.deepEqual([...bytes], [0x20, 3, 0x48, 9]);
  });

  test("DeleteResponse bytes of the delete command", () => {
    const resp = fromBinary(DeleteResponseSchema, deleteResponseBytes(1_700_000_000_500));
    assert.equal(resp.exitStatus, 137);
    assert.equal(resp.exitedAt?.seconds, 1_700_000_000n);
    assert.equal(resp.exitedAt?.nanos, 500_000_000);
  });

  test("cgroups v1 Metrics field numbers CRI reads", () => {
    const bytes = toBinary(
      MetricsSchema,
      create(MetricsSchema, { memory: { totalInactiveFile: 5n, usage: { usage: 7n } }, cpu: { usage: { total: 3n } } }),
    );
    // cpu=3 {usage=1 {total=1: 3}}; memory=4 {total_inactive_file=30: 5, usage=33 {usage=2: 7}}
    assert.deepEqual([...bytes], [0x1a, 4, 0x0a, 2, 0x08, 3, 0x22, 8, 0xf0, 0x01, 5, 0x8a, 0x02, 2, 0x10, 7]);
  });

  test("Task service path and methods", () => {
    assert.equal(Task.typeName, "containerd.task.v2.Task");
    assert.deepEqual(
      Task.methods.map((m) => m.name),
      ["State", "Create", "Start", "Delete", "Pids", "Pause", "Resume", "Checkpoint", "Kill", "Exec", "ResizePty", "CloseIO", "Update", "Wait", "Stats", "Connect", "Shutdown"],
    );
  });
});

describe("daemon exec arguments", () => {
  test("bare --import specifiers are resolved, paths and other flags kept", async () => {
    const { daemonExecArgv } = await import("../../src/shim/start.js");
    const out = daemonExecArgv(["--import", "tsx", "--import=./x.mjs", "--no-warnings", "--import", "file:///a.mjs"]);
    assert.match(out[1]!, /^file:\/\/.*tsx/);
    assert.deepEqual(out.slice(2), ["--import=./x.mjs", "--no-warnings", "--import", "file:///a.mjs"]);
  });
});
