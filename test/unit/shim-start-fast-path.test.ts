// The shim launcher's `start` without node (src/shim/start-fast-path.sh):
// the address it prints is the one the node code computes, and everything it
// does not recognise goes to node.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { shimSocketAddress, socketPathOf } from "../../src/shim/address.js";

const root = mkdtempSync(join(tmpdir(), "hako-test-fast-start-"));
const socketDir = join(root, "s");
const launcher = join(root, "bin", "containerd-shim-hako-v2");
const CONTAINERD = "/run/containerd/containerd.sock";
const servers: net.Server[] = [];

before(() => {
  mkdirSync(join(root, "bin"));
  mkdirSync(join(root, "lib", "hako"), { recursive: true });
  mkdirSync(socketDir);
  // The launcher as scripts/build.mjs writes it, with a stand-in for the node program.
  const fastPath = readFileSync(join(import.meta.dirname, "..", "..", "src", "shim", "start-fast-path.sh"), "utf8");
  writeFileSync(launcher, `#!/bin/sh\nhako_here=${join(root, "bin")}\n${fastPath}\nexec node "$hako_here/../lib/hako/containerd-shim-hako-v2.mjs" "$@"\n`);
  chmodSync(launcher, 0o755);
  writeFileSync(join(root, "lib", "hako", "containerd-shim-hako-v2.mjs"), 'process.stdout.write("NODE " + process.argv.slice(2).join(" "));\n');
});
after(() => {
  for (const s of servers) s.close();
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

function start(dir: string, args: string[] = ["-namespace", "k8s.io", "-address", CONTAINERD, "-publish-binary", "/usr/bin/containerd", "-id", "c1", "start"]): string {
  const r = spawnSync(launcher, args, { cwd: dir, env: { ...process.env, HAKO_SHIM_SOCKET_DIR: socketDir }, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
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

test("anything else is node's: no listener, other flag forms, odd annotation values, other actions", async () => {
  await listenFor("sb-1");
  const cri = bundle("cri2", annotations({ "io.kubernetes.cri.sandbox-id": "sb-1" }));
  assert.match(start(bundle("nobody", annotations({ "io.kubernetes.cri.sandbox-id": "sb-2" }))), /^NODE /, "nothing listens for sb-2");
  assert.match(start(cri, ["-namespace=k8s.io", "-address", CONTAINERD, "-id", "c1", "start"]), /^NODE /);
  assert.match(start(cri, ["-namespace", "k8s.io", "-address", `${CONTAINERD}/`, "-id", "c1", "start"]), /^NODE /, "a path node would normalise");
  assert.match(start(cri, ["-namespace", "k8s.io", "-address", CONTAINERD, "-id", "c1", "delete"]), /^NODE /);
  assert.match(start(bundle("escaped", '{"annotations":{"io.kubernetes.cri.sandbox-id":"sb\\"1"}}')), /^NODE /);
  assert.match(start(bundle("empty", annotations({ "io.kubernetes.cri.sandbox-id": "" }))), /^NODE /);
  assert.match(start(join(root, "bundles")), /^NODE /, "no config.json");
});
