// The shim launcher's `start` without node (src/shim/start-fast-path.sh):
// the address it prints is the one the node code computes, the daemon it
// spawns gets the flags and stdin start.ts would give it, and everything it
// does not recognise goes to node.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { chmodSync, closeSync, constants, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { shimSocketAddress, socketPathOf } from "../../src/shim/address.js";
import { readySpares, spareDir } from "../../src/shim/spare.js";

const root = mkdtempSync(join(tmpdir(), "hako-test-fast-start-"));
const socketDir = join(root, "s");
const launcher = join(root, "bin", "containerd-shim-hako-v2");
const CONTAINERD = "/run/containerd/containerd.sock";
const servers: net.Server[] = [];
const daemons: number[] = [];

/**
 * The node program's stand-in: as `start`, it says it was run; as `serve`
 * (the daemon the launcher spawns), it records its argv, environment marker,
 * stdin and cwd in <bundle>/daemon.json, then listens on its -socket (or
 * exits 3 if the bundle has a file named `die`).
 */
const STAND_IN = `
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import net from "node:net";
const argv = process.argv.slice(2);
if (argv.at(-1) !== "serve") { process.stdout.write("NODE " + argv.join(" ")); process.exit(0); }
const stdin = readFileSync(0, "utf8");
writeFileSync("daemon.json", JSON.stringify({ pid: process.pid, argv, marker: process.env.HAKO_SHIM_OPTIONS_ON_STDIN ?? null, stdin, cwd: process.cwd() }));
if (existsSync("die")) process.exit(3);
net.createServer((c) => c.destroy()).listen(argv[argv.indexOf("-socket") + 1].slice("unix://".length));
`;

before(() => {
  mkdirSync(join(root, "bin"));
  mkdirSync(join(root, "lib", "hako"), { recursive: true });
  mkdirSync(socketDir);
  // The launcher as scripts/build.mjs writes it, with a stand-in for the node program.
  const fastPath = readFileSync(join(import.meta.dirname, "..", "..", "src", "shim", "start-fast-path.sh"), "utf8");
  writeFileSync(launcher, `#!/bin/sh\nhako_here=${join(root, "bin")}\n${fastPath}\nexec "$hako_here/../lib/hako/hako-ksm-exec" on node "$hako_here/../lib/hako/containerd-shim-hako-v2.mjs" "$@"\n`);
  chmodSync(launcher, 0o755);
  writeFileSync(join(root, "lib", "hako", "containerd-shim-hako-v2.mjs"), STAND_IN);
  // hako-ksm-exec's stand-in: the daemon must be started through it, asking for "on".
  writeFileSync(join(root, "lib", "hako", "hako-ksm-exec"), '#!/bin/sh\n[ "$1" = on ] || { echo "hako-ksm-exec: $1" >&2; exit 9; }\nshift\nexec "$@"\n');
  chmodSync(join(root, "lib", "hako", "hako-ksm-exec"), 0o755);
});
after(() => {
  for (const s of servers) s.close();
  for (const pid of daemons) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* exited */
    }
  }
  rmSync(root, { recursive: true, force: true });
});

/** A bundle whose config.json is `spec` (a string: written as is). */
function bundle(name: string, spec: object | string): string {
  const dir = join(root, "bundles", name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), typeof spec === "string" ? spec : JSON.stringify(spec));
  return dir;
}

/** Listens where the shim of `group` would (once per group). */
const listening = new Set<string>();
async function listenFor(group: string): Promise<string> {
  const address = shimSocketAddress(CONTAINERD, "k8s.io", group, socketDir);
  if (listening.has(address)) return address;
  listening.add(address);
  const server = net.createServer((c) => c.destroy());
  servers.push(server);
  await new Promise<void>((r) => server.listen(socketPathOf(address), r));
  return address;
}

const START_ARGS = ["-namespace", "k8s.io", "-address", CONTAINERD, "-publish-binary", "/usr/bin/containerd", "-id", "c1", "start"];

function runLauncher(dir: string, args: string[], input = ""): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(launcher, args, { cwd: dir, env: { ...process.env, HAKO_SHIM_SOCKET_DIR: socketDir }, encoding: "utf8", input, timeout: 20_000 });
}

function start(dir: string, args: string[] = START_ARGS): string {
  const r = runLauncher(dir, args);
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

/** A bundle with containerd's `log` fifo, open for reading as containerd keeps it during start. */
function bundleWithLog(name: string, spec: object): { dir: string; close: () => void } {
  const dir = bundle(name, spec);
  execFileSync("mkfifo", [join(dir, "log")]);
  const fd = openSync(join(dir, "log"), constants.O_RDONLY | constants.O_NONBLOCK);
  return { dir, close: () => closeSync(fd) };
}

const annotations = (a: Record<string, string>): object => ({ ociVersion: "1.0.2", process: { args: ["sh"], env: ['A="io.kubernetes.cri.sandbox-id":"not-this"'] }, annotations: a });

test("a running pod shim: the address node computes, printed and written to <bundle>/address, without node", async () => {
  const address = await listenFor("sb-1");
  const dir = bundle("cri", annotations({ "io.kubernetes.cri.sandbox-id": "sb-1", "io.kubernetes.cri.container-type": "container" }));
  assert.equal(start(dir), address);
  assert.equal(readFileSync(join(dir, "address"), "utf8"), address);
  // containerd's -debug, -bundle and double dashes are fine too.
  assert.equal(start(dir, ["--namespace", "k8s.io", "-address", CONTAINERD, "-debug", "-bundle", dir, "-id", "c1", "start"]), address);
  // Indented JSON.
  assert.equal(start(bundle("indented", JSON.stringify(annotations({ "io.kubernetes.cri.sandbox-id": "sb-1" }), null, 2))), address);
});

test("the runc group annotation comes first; no annotation: the task id is the group", async () => {
  const group = await listenFor("grp");
  assert.equal(start(bundle("group", annotations({ "io.kubernetes.cri.sandbox-id": "sb-1", "io.containerd.runc.v2.group": "grp" }))), group);
  const own = await listenFor("c1");
  assert.equal(start(bundle("none", annotations({}))), own);
});

test("no shim for the pod yet: the launcher spawns the daemon with the start's flags and containerd's options on its stdin, and waits until it listens", async () => {
  const b = bundleWithLog("spawn", annotations({ "io.kubernetes.cri.sandbox-id": "sb-new" }));
  try {
    const r = runLauncher(b.dir, ["-namespace", "k8s.io", "-address", CONTAINERD, "-publish-binary", "/usr/bin/containerd", "-id", "sb-new", "-debug", "start"], "options-bytes");
    const address = shimSocketAddress(CONTAINERD, "k8s.io", "sb-new", socketDir);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, address);
    assert.equal(readFileSync(join(b.dir, "address"), "utf8"), address);
    const d = JSON.parse(readFileSync(join(b.dir, "daemon.json"), "utf8")) as { pid: number; argv: string[]; marker: string; stdin: string; cwd: string };
    daemons.push(d.pid);
    assert.deepEqual(d.argv, ["-namespace", "k8s.io", "-address", CONTAINERD, "-publish-binary", "/usr/bin/containerd", "-id", "sb-new", "-bundle", b.dir, "-socket", address, "-debug", "serve"]);
    assert.equal(d.marker, "1");
    assert.equal(d.stdin, "options-bytes", "containerd's runtime options reach the daemon");
    assert.equal(d.cwd, b.dir);
    // The next task of the pod finds it.
    assert.equal(start(bundle("spawn-ctr", annotations({ "io.kubernetes.cri.sandbox-id": "sb-new" }))), address);
  } finally {
    b.close();
  }
});

test("a daemon that dies before it listens: start fails with one line on stderr", () => {
  const b = bundleWithLog("dies", annotations({ "io.kubernetes.cri.sandbox-id": "sb-dies" }));
  try {
    writeFileSync(join(b.dir, "die"), "");
    const r = runLauncher(b.dir, START_ARGS);
    assert.equal(r.status, 1);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^containerd-shim-hako-v2 start: shim daemon for c1 failed to start \(its messages are in the shim log\)\n$/);
  } finally {
    b.close();
  }
});

test("anything else is node's: no listener, other flag forms, odd annotation values, other actions", async () => {
  await listenFor("sb-1");
  const cri = bundle("cri2", annotations({ "io.kubernetes.cri.sandbox-id": "sb-1" }));
  assert.match(start(bundle("nobody", annotations({ "io.kubernetes.cri.sandbox-id": "sb-2" }))), /^NODE /, "nothing listens for sb-2, and no log fifo to spawn a daemon with");
  assert.match(start(cri, ["-namespace=k8s.io", "-address", CONTAINERD, "-id", "c1", "start"]), /^NODE /);
  assert.match(start(cri, ["-namespace", "k8s.io", "-address", `${CONTAINERD}/`, "-id", "c1", "start"]), /^NODE /, "a path node would normalise");
  assert.match(start(cri, ["-namespace", "k8s.io", "-address", CONTAINERD, "-id", "c1", "delete"]), /^NODE /);
  assert.match(start(bundle("escaped", '{"annotations":{"io.kubernetes.cri.sandbox-id":"sb\\"1"}}')), /^NODE /);
  assert.match(start(bundle("empty", annotations({ "io.kubernetes.cri.sandbox-id": "" }))), /^NODE /);
  assert.match(start(join(root, "bundles")), /^NODE /, "no config.json");
});

/**
 * A spare's stand-in (src/shim/spare.ts): makes ready-<its pid> in the spare
 * directory, and on a request records it (argv, options, its pid) in
 * <bundle>/spare.json and listens on its -socket, or exits 3 if the bundle
 * has a file named `spare-die`.
 */
const SPARE_STAND_IN = `
import { execFileSync } from "node:child_process";
import { constants, existsSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
const ready = process.argv[2] + "/ready-" + process.pid;
execFileSync("mkfifo", [ready]);
const fifo = new net.Socket({ fd: openSync(ready, constants.O_RDWR | constants.O_NONBLOCK), readable: true, writable: false });
let line = "";
fifo.on("data", (d) => {
  line += d;
  if (!line.includes("\\n")) return;
  const req = line.split("\\n")[0];
  const argv = readFileSync(req, "utf8").split("\\0").slice(0, -1);
  const bundle = argv[argv.indexOf("-bundle") + 1];
  writeFileSync(bundle + "/spare.json", JSON.stringify({ pid: process.pid, req, argv, opts: readFileSync(req + ".opts", "utf8") }));
  if (existsSync(bundle + "/spare-die")) process.exit(3);
  fifo.destroy();
  rmSync(process.argv[2] + "/claimed-" + process.pid, { force: true });
  net.createServer((c) => c.destroy()).listen(argv[argv.indexOf("-socket") + 1].slice("unix://".length));
});
`;

/** Starts a spare stand-in for our containerd's k8s.io namespace; resolves with its pid once it waits. */
async function startSpare(): Promise<number> {
  const dir = spareDir(CONTAINERD, "k8s.io", socketDir);
  mkdirSync(dir, { recursive: true });
  const script = join(root, "spare.mjs");
  writeFileSync(script, SPARE_STAND_IN);
  const child = spawn(process.execPath, [script, dir], { stdio: "ignore", detached: true });
  child.unref();
  const pid = child.pid!;
  daemons.push(pid);
  for (let i = 0; i < 200 && !readySpares(dir).includes(pid); i++) await sleep(10);
  assert.ok(readySpares(dir).includes(pid), "the spare stand-in waits");
  return pid;
}

test("a waiting spare takes the pod: it gets the daemon's flags and containerd's options, and nothing is spawned", async () => {
  const pid = await startSpare();
  const b = bundleWithLog("spare", annotations({ "io.kubernetes.cri.sandbox-id": "sb-spare" }));
  try {
    const r = runLauncher(b.dir, ["-namespace", "k8s.io", "-address", CONTAINERD, "-publish-binary", "/usr/bin/containerd", "-id", "sb-spare", "start"], "spare-options");
    const address = shimSocketAddress(CONTAINERD, "k8s.io", "sb-spare", socketDir);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, address);
    assert.equal(readFileSync(join(b.dir, "address"), "utf8"), address);
    const s = JSON.parse(readFileSync(join(b.dir, "spare.json"), "utf8")) as { pid: number; req: string; argv: string[]; opts: string };
    assert.equal(s.pid, pid);
    assert.deepEqual(s.argv, ["-namespace", "k8s.io", "-address", CONTAINERD, "-publish-binary", "/usr/bin/containerd", "-id", "sb-spare", "-bundle", b.dir, "-socket", address, "serve"]);
    assert.equal(s.opts, "spare-options");
    assert.equal(existsSync(join(b.dir, "daemon.json")), false, "no daemon spawned");
    assert.equal(existsSync(s.req), false, "the request is removed once the spare serves");
    assert.equal(existsSync(spareDir(CONTAINERD, "k8s.io", socketDir)), false, "the last spare's directory goes with it");
  } finally {
    b.close();
  }
});

test("a spare that fails the request: the launcher spawns the daemon, with containerd's options on its stdin", async () => {
  const pid = await startSpare();
  const b = bundleWithLog("spare-dies", annotations({ "io.kubernetes.cri.sandbox-id": "sb-spare-dies" }));
  try {
    writeFileSync(join(b.dir, "spare-die"), "");
    const r = runLauncher(b.dir, ["-namespace", "k8s.io", "-address", CONTAINERD, "-id", "sb-spare-dies", "start"], "options-again");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, shimSocketAddress(CONTAINERD, "k8s.io", "sb-spare-dies", socketDir));
    assert.equal((JSON.parse(readFileSync(join(b.dir, "spare.json"), "utf8")) as { pid: number }).pid, pid, "the spare was asked first");
    const d = JSON.parse(readFileSync(join(b.dir, "daemon.json"), "utf8")) as { pid: number; stdin: string };
    daemons.push(d.pid);
    assert.equal(d.stdin, "options-again", "the options the spare did not use reach the daemon");
    assert.deepEqual(readdirSync(spareDir(CONTAINERD, "k8s.io", socketDir)), [], "no request or claimed fifo left");
  } finally {
    b.close();
  }
});
