// The tcfilter endpoint against the real kernel, in two network namespaces
// this test creates (and always deletes). No VM: the tap stays NO-CARRIER
// because nothing holds its fd, which is fine for checking the plumbing.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { TcFilterEndpoint } from "../../src/resource/network/tc-filter-endpoint.js";
import { scanNetns } from "../../src/resource/network/netns-scan.js";
import { PodNetwork } from "../../src/resource/network/pod-network.js";
import { cleanupAfterShim } from "../../src/shim/delete.js";
import { writeState } from "../../src/runtime/state.js";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const tag = randomBytes(3).toString("hex");
const nsA = `hako-t-${tag}-a`;
const nsB = `hako-t-${tag}-b`;
const pathA = `/run/netns/${nsA}`;
const octet = 1 + (randomBytes(1)[0]! % 250);
const ipA = `10.123.${octet}.1`;
const ipB = `10.123.${octet}.2`;
const created: string[] = [];

const sh = (cmd: string, args: string[]): string => execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
const inA = (...args: string[]): string => sh("ip", ["-n", nsA, ...args]);
const tcA = (...args: string[]): string => sh("tc", ["-n", nsA, ...args]);
const ours = (): string[] => sh("ip", ["netns", "list"]).split("\n").map((l) => l.split(" ")[0] ?? "").filter((n) => n.startsWith(`hako-t-${tag}-`));

function deleteNamespaces(): void {
  for (const ns of created.splice(0)) {
    try {
      sh("ip", ["netns", "del", ns]);
    } catch {
      /* already gone */
    }
  }
}
after(deleteNamespaces);

const root = process.getuid?.() === 0;

test("TcFilterEndpoint: tap + ingress redirects both ways, scanNetns, clean detach", { skip: root ? false : "needs root for netns/tc", timeout: 5000 }, async () => {
  for (const ns of [nsA, nsB]) {
    sh("ip", ["netns", "add", ns]);
    created.push(ns);
  }
  sh("ip", ["link", "add", "eth0", "netns", nsA, "type", "veth", "peer", "name", "eth0", "netns", nsB]);
  inA("addr", "add", `${ipA}/24`, "dev", "eth0");
  inA("link", "set", "dev", "eth0", "mtu", "1400", "up");
  inA("link", "set", "dev", "lo", "up");
  sh("ip", ["-n", nsB, "addr", "add", `${ipB}/24`, "dev", "eth0"]);
  sh("ip", ["-n", nsB, "link", "set", "dev", "eth0", "up"]);
  inA("route", "add", "default", "via", ipB);
  inA("neigh", "add", `10.123.${octet}.9`, "lladdr", "02:00:00:00:00:09", "dev", "eth0");
  const vethMac = (JSON.parse(inA("-j", "link", "show", "dev", "eth0")) as Array<{ address: string }>)[0]!.address;

  const ep = await TcFilterEndpoint.create({ netnsPath: pathA, veth: "eth0" });
  assert.equal(ep.tapName, "tap0_hako");
  assert.equal(ep.mac, vethMac);
  assert.equal(ep.mtu, 1400);
  await ep.attach();

  const tap = (JSON.parse(inA("-j", "link", "show", "dev", "tap0_hako")) as Array<{ mtu: number; flags: string[] }>)[0]!;
  assert.equal(tap.mtu, 1400);
  assert.ok(tap.flags.includes("UP"), "tap is up");
  assert.match(tcA("qdisc", "show", "dev", "eth0"), /qdisc ingress ffff:/);
  assert.match(tcA("qdisc", "show", "dev", "tap0_hako"), /qdisc ingress ffff:/);
  assert.match(tcA("filter", "show", "dev", "eth0", "ingress"), /mirred \(Egress Redirect to device tap0_hako\)/);
  assert.match(tcA("filter", "show", "dev", "tap0_hako", "ingress"), /mirred \(Egress Redirect to device eth0\)/);

  // A frame from B hits A's veth ingress and is redirected: the filter's action counter moves.
  sh("ip", ["-n", nsB, "neigh", "replace", ipA, "lladdr", vethMac, "dev", "eth0"]);
  const send = 'const s=require("dgram").createSocket("udp4");s.send("hako",9,process.argv[1],()=>s.close())';
  sh("ip", ["netns", "exec", nsB, process.execPath, "-e", send, ipA]);
  assert.match(tcA("-s", "filter", "show", "dev", "eth0", "ingress"), /Sent \d+ bytes [1-9]\d* pkt/);

  const scan = await scanNetns(pathA);
  assert.deepEqual(scan.interfaces, [{ name: "eth0", mac: vethMac, mtu: 1400, addresses: [{ family: 4, address: ipA, prefixLength: 24 }] }]);
  const v4 = scan.routes.filter((r) => r.family === 4);
  assert.deepEqual(v4, [
    { family: 4, dest: "0.0.0.0/0", gateway: ipB, device: "eth0", scope: "global", source: "" },
    { family: 4, dest: `10.123.${octet}.0/24`, gateway: "", device: "eth0", scope: "link", source: ipA },
  ]);
  assert.deepEqual(scan.neighbors, [{ family: 4, ip: `10.123.${octet}.9`, mac: "02:00:00:00:00:09", device: "eth0" }]);

  await ep.detach();
  await ep.detach();
  assert.doesNotMatch(inA("link", "show"), /tap0_hako/);
  assert.doesNotMatch(tcA("qdisc", "show", "dev", "eth0"), /ingress/);
  let filters = "";
  try {
    filters = tcA("filter", "show", "dev", "eth0", "ingress");
  } catch {
    /* no ingress qdisc: nothing to show */
  }
  assert.equal(filters.trim(), "");
  assert.match(inA("link", "show", "dev", "eth0"), /state UP/, "the veth is left as it was");

  deleteNamespaces();
  assert.deepEqual(ours(), []);
});

test("the shim's delete after a dead shim removes the taps and filters its sandbox recorded in state.json", { skip: root ? false : "needs root for netns/tc", timeout: 10_000 }, async () => {
  const ns = `hako-t-${tag}-shim`;
  const peer = `hako-t-${tag}-shimpeer`;
  for (const n of [ns, peer]) {
    sh("ip", ["netns", "add", n]);
    created.push(n);
  }
  sh("ip", ["link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", "eth0", "netns", peer]);
  sh("ip", ["-n", ns, "link", "set", "dev", "eth0", "up"]);
  const netnsPath = `/run/netns/${ns}`;
  const net = await PodNetwork.open(netnsPath);
  await net.attach();
  assert.match(sh("ip", ["-n", ns, "link", "show"]), /tap0_hako/);

  // What a shim that was killed leaves: a sandbox state naming the network, an owner pid that is not a live hako.
  const dir = mkdtempSync(join(tmpdir(), "hako-test-shimdel-"));
  const oldConfig = process.env.HAKO_CONFIG;
  try {
    const stateDir = join(dir, "state");
    const id = "shimdel1";
    const sbDir = join(stateDir, "sandboxes", id);
    mkdirSync(sbDir, { recursive: true });
    writeState(sbDir, { id, bundle: join(dir, "bundle"), status: "running", ownerPid: 0, vmmPid: 0, guestPid: 0, created: new Date().toISOString(), network: net.record() });
    mkdirSync(join(dir, "bundle"));
    writeFileSync(join(dir, "bundle", "config.json"), "{}");
    writeFileSync(join(dir, "configuration.toml"), `[runtime]\nstate_dir = "${stateDir}"\n`);
    process.env.HAKO_CONFIG = join(dir, "configuration.toml");
    await cleanupAfterShim(id, join(dir, "bundle"), "default");
    assert.doesNotMatch(sh("ip", ["-n", ns, "link", "show"]), /tap0_hako/);
    assert.equal(sh("tc", ["-n", ns, "qdisc", "show", "dev", "eth0", "ingress"]).trim(), "");
    assert.equal(existsSync(sbDir), false, "the state went with it");
  } finally {
    if (oldConfig === undefined) delete process.env.HAKO_CONFIG;
    else process.env.HAKO_CONFIG = oldConfig;
    rmSync(dir, { recursive: true, force: true });
    await net.detach();
  }
});
