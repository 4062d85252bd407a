// Pod networking end to end with a real VM: a network namespace set up the
// way CNI would (veth eth0 with an address, MTU, default route and a static
// neighbour), `hako run` with that netns in the bundle's spec, then traffic
// both ways between the guest and the veth's peer, and nothing left in the
// netns afterwards. The peer end lives in a second namespace this test
// creates, so no traffic and no device touch the host's own network.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { makeBundle, removeDir } from "../helpers/bundle.js";
import { TEST_STATE_DIR, hako, hakoSpawn, hakoSync } from "../helpers/hako.js";
import { describeLeaks, findLeaks, hasLeaks } from "../helpers/leaks.js";

const root = process.getuid?.() === 0;
const tag = randomBytes(3).toString("hex");
const POD_IP = "10.213.7.2";
const PEER_IP = "10.213.7.1";
const NEIGH_IP = "10.213.7.9";
const NEIGH_MAC = "02:00:00:00:07:09";
const MTU = 1400;
const namespaces: string[] = [];
const bundles: string[] = [];
const children: ChildProcess[] = [];
const ids: string[] = [];
let seq = 0;
const newId = (): string => {
  const id = `net${process.pid}-${seq++}`;
  ids.push(id);
  return id;
};

const sh = (cmd: string, args: string[]): string => execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
const nsPath = (ns: string): string => `/run/netns/${ns}`;
const inNs = (ns: string, cmd: string, ...args: string[]): string => sh("nsenter", [`--net=${nsPath(ns)}`, "--", cmd, ...args]);

/** A pod-like netns `hako-test-<tag>-<name>` whose eth0 is paired with `peer` in the peer netns. */
function makePodNetns(name: string, peer: string, peerNs: string): { ns: string; mac: string } {
  const ns = `hako-test-${tag}-${name}`;
  sh("ip", ["netns", "add", ns]);
  namespaces.push(ns);
  sh("ip", ["link", "add", "eth0", "netns", ns, "mtu", String(MTU), "type", "veth", "peer", "name", peer, "netns", peerNs, "mtu", String(MTU)]);
  inNs(ns, "ip", "link", "set", "dev", "lo", "up");
  inNs(ns, "ip", "addr", "add", `${POD_IP}/24`, "dev", "eth0");
  inNs(ns, "ip", "link", "set", "dev", "eth0", "up");
  inNs(ns, "ip", "route", "add", "default", "via", PEER_IP);
  inNs(ns, "ip", "neigh", "add", NEIGH_IP, "lladdr", NEIGH_MAC, "dev", "eth0", "nud", "permanent");
  inNs(peerNs, "ip", "addr", "add", `${PEER_IP}/24`, "dev", peer);
  inNs(peerNs, "ip", "link", "set", "dev", peer, "up");
  const mac = (JSON.parse(inNs(ns, "ip", "-j", "link", "show", "dev", "eth0")) as Array<{ address: string }>)[0]!.address;
  return { ns, mac };
}

function deleteNetns(ns: string): void {
  try {
    sh("ip", ["netns", "del", ns]);
  } catch {
    /* already gone */
  }
}

/** A bundle running `script` whose spec joins the network namespace at `netns`. */
function netBundle(script: string, netns: string): string {
  const b = makeBundle({ args: ["sh", "-c", script] });
  bundles.push(b);
  const cfgPath = join(b, "config.json");
  const cfg = JSON.parse(readFileSync(cfgPath, "utf8")) as { linux: { namespaces: Array<{ type: string; path?: string }> } };
  cfg.linux.namespaces = cfg.linux.namespaces.map((n) => (n.type === "network" ? { type: "network", path: netns } : n));
  writeFileSync(cfgPath, JSON.stringify(cfg));
  return b;
}

/** What hako leaves in a netns: taps, ingress qdiscs and filters on eth0. */
function plumbing(ns: string): { taps: string[]; qdisc: string; filters: string } {
  const links = JSON.parse(inNs(ns, "ip", "-j", "link", "show")) as Array<{ ifname: string }>;
  let filters = "";
  try {
    filters = inNs(ns, "tc", "filter", "show", "dev", "eth0", "ingress").trim();
  } catch {
    /* no ingress qdisc: no filter either */
  }
  return { taps: links.map((l) => l.ifname).filter((n) => /_hako$/.test(n)), qdisc: inNs(ns, "tc", "qdisc", "show", "dev", "eth0", "ingress").trim(), filters };
}

async function waitFor(cond: () => boolean, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts `hako --debug run` in the background; resolves once the container printed "started". */
async function startRun(bundle: string, id: string): Promise<{ child: ChildProcess; exited: Promise<number | null>; out: () => string; err: () => string }> {
  const child = hakoSpawn(["--debug", "run", "--bundle", bundle, id]);
  children.push(child);
  let out = "";
  let err = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
  await waitFor(() => out.includes("started") || child.exitCode !== null, 120_000, () => `container start (stderr: ${err.slice(-2000)})`);
  assert.ok(out.includes("started"), `hako run exited early: ${err.slice(-2000)}`);
  return { child, exited, out: () => out, err: () => err };
}

/** The timeline hako logs at debug level once the container runs. */
function timeline(stderr: string): Record<string, number> | undefined {
  for (const line of stderr.split("\n")) {
    if (!line.includes('"container running"')) continue;
    try {
      return (JSON.parse(line) as { timeline?: Record<string, number> }).timeline;
    } catch {
      /* not JSON */
    }
  }
  return undefined;
}

let peerNs = "";
let server: ChildProcess | undefined;
let port = 0;

before(() => {
  if (!root) return;
  peerNs = `hako-test-${tag}-peer`;
  sh("ip", ["netns", "add", peerNs]);
  namespaces.push(peerNs);
  inNs(peerNs, "ip", "link", "set", "dev", "lo", "up");
});

/** The pod's "outside world": an HTTP server on the veth peer's address, in the peer netns (by pid, killed in after()). */
function startServer(): Promise<void> {
  if (server) return Promise.resolve();
  const code = `require("node:http").createServer((q, s) => s.end("hello-from-peer\\n")).listen(0, ${JSON.stringify(PEER_IP)}, function () { console.log("port " + this.address().port); })`;
  const child = spawn("nsenter", [`--net=${nsPath(peerNs)}`, "--", process.execPath, "-e", code], { stdio: ["ignore", "pipe", "inherit"] });
  server = child;
  return new Promise((resolve, reject) => {
    let buf = "";
    child.stdout!.on("data", (d: Buffer) => {
      buf += d.toString();
      const m = /port (\d+)/.exec(buf);
      if (m) {
        port = Number(m[1]);
        resolve();
      }
    });
    child.once("exit", (c) => reject(new Error(`peer HTTP server exited (${c})`)));
  });
}

afterEach(() => {
  // Only what this run owns: the netns bind mounts under /run/netns carry the
  // hako-test- prefix too, and another test run on the machine has its own mounts.
  const all = findLeaks(TEST_STATE_DIR);
  const l = { ...all, mounts: all.mounts.filter((m) => m.startsWith(TEST_STATE_DIR)) };
  assert.ok(!hasLeaks(l), `leaked: ${describeLeaks(l)}`);
});

after(() => {
  // A failed test may leave its hako run (a child of this process) and its VM: remove them before the netns.
  for (const c of children) if (c.exitCode === null && c.pid !== undefined) c.kill("SIGKILL");
  for (const id of ids) hakoSync(["delete", "-f", id]);
  if (server?.pid !== undefined && server.exitCode === null) server.kill("SIGKILL");
  for (const ns of namespaces.splice(0).reverse()) deleteNetns(ns);
  for (const b of bundles) removeDir(b);
});

const skip = root ? false : "needs root for network namespaces";

test("hako run in a pod netns: the guest's eth0 is the pod's; traffic both ways; nothing left in the netns after exit", { skip }, async (t) => {
  const pod = makePodNetns("pod", "peer0", peerNs);
  await startServer();
  const id = newId();
  const b = netBundle("mkdir -p /www && echo hello-from-guest > /www/index.html && echo started && exec httpd -f -p 8080 -h /www", nsPath(pod.ns));
  const run = await startRun(b, id);

  // Host side while it runs: QEMU sits in the pod netns, holding tap0_hako (carrier up), and eth0 ⇄ tap0_hako are redirected.
  const st = JSON.parse(hakoSync(["state", id]).stdout) as { pid: number };
  assert.equal(readlinkSync(`/proc/${st.pid}/ns/net`), `net:[${statSync(nsPath(pod.ns)).ino}]`, "QEMU runs in the pod netns");
  const tap = (JSON.parse(inNs(pod.ns, "ip", "-j", "link", "show", "dev", "tap0_hako")) as Array<{ flags: string[]; mtu: number }>)[0]!;
  assert.ok(tap.flags.includes("LOWER_UP"), `tap has carrier: ${tap.flags.join(",")}`);
  assert.equal(tap.mtu, MTU);
  assert.match(plumbing(pod.ns).filters, /mirred \(Egress Redirect to device tap0_hako\)/);

  // In the guest: eth0 has the pod's MAC, MTU, address, default route and static neighbour.
  const probe = await hako(["exec", id, "sh", "-c", "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; ip -o addr show dev eth0; ip route; cat /proc/net/arp"]);
  assert.equal(probe.status, 0, probe.stderr);
  const seen = probe.stdout.toString();
  t.diagnostic(`guest network:\n${seen}`);
  const [mac, mtu] = seen.split("\n");
  assert.equal(mac, pod.mac);
  assert.equal(mtu, String(MTU));
  assert.match(seen, new RegExp(`inet ${POD_IP.replace(/\./g, "\\.")}/24 .*eth0`));
  assert.match(seen, new RegExp(`^default via ${PEER_IP.replace(/\./g, "\\.")} dev eth0`, "m"));
  assert.match(seen, new RegExp(`^${NEIGH_IP.replace(/\./g, "\\.")}\\s+0x1\\s+0x6\\s+${NEIGH_MAC}\\s+\\*\\s+eth0`, "m"));

  // Guest → peer.
  // (busybox 1.35's wget crashes with -T: the timeout is hako()'s.)
  const get = await hako(["exec", id, "wget", "-q", "-O-", `http://${PEER_IP}:${port}/`], { timeoutMs: 30_000 });
  assert.equal(get.status, 0, get.stderr);
  assert.equal(get.stdout.toString(), "hello-from-peer\n");

  // Peer → guest (the container's httpd).
  let fromGuest = "";
  await waitFor(
    () => {
      try {
        fromGuest = execFileSync("nsenter", [`--net=${nsPath(peerNs)}`, "--", "busybox", "wget", "-q", "-O-", `http://${POD_IP}:8080/index.html`], { encoding: "utf8", timeout: 5000, stdio: ["ignore", "pipe", "pipe"] });
      } catch {
        /* httpd not listening yet */
      }
      return fromGuest !== "";
    },
    20_000,
    () => "the guest's httpd to answer from the peer netns",
  );
  assert.equal(fromGuest, "hello-from-guest\n");

  const tl = timeline(run.err());
  if (tl) {
    t.diagnostic(`timeline (ms): ${JSON.stringify(tl)}`);
    t.diagnostic(`scan + taps + filters: ${(tl["network_attached"] ?? NaN) - (tl["config"] ?? NaN)} ms; agent network RPCs: ${(tl["guest_network"] ?? NaN) - (tl["agent_ready"] ?? NaN)} ms`);
  }

  const kill = hakoSync(["kill", id, "KILL"]);
  assert.equal(kill.status, 0, kill.stderr);
  assert.equal(await run.exited, 137, run.err().slice(-2000));
  assert.deepEqual(plumbing(pod.ns), { taps: [], qdisc: "", filters: "" }, "no tap, qdisc or filter left in the pod netns");
  assert.match(inNs(pod.ns, "ip", "-o", "link", "show", "dev", "eth0"), /state UP/, "the pod's veth is left as it was");
  deleteNetns(pod.ns);
});

test("after hako run is SIGKILLed, hako delete -f removes the VM and the taps and filters it added", { skip }, async () => {
  const pod = makePodNetns("crash", "peer1", peerNs);
  const id = newId();
  const run = await startRun(netBundle("echo started; exec sleep 1000", nsPath(pod.ns)), id);
  run.child.kill("SIGKILL");
  await run.exited;
  assert.ok(findLeaks(TEST_STATE_DIR).qemu.length > 0, "the VM outlives a SIGKILLed owner");
  assert.deepEqual(plumbing(pod.ns).taps, ["tap0_hako"], "the tap is still there");
  const del = hakoSync(["delete", "-f", id]);
  assert.equal(del.status, 0, del.stderr);
  assert.deepEqual(plumbing(pod.ns), { taps: [], qdisc: "", filters: "" }, "delete -f removed the tap, the qdisc and the filter");
  deleteNetns(pod.ns);
});

test("a pod netns deleted before the sandbox stops (as CRI does) is no error", { skip }, async () => {
  const pod = makePodNetns("gone", "peer2", peerNs);
  const id = newId();
  const run = await startRun(netBundle("echo started; exec sleep 1000", nsPath(pod.ns)), id);
  deleteNetns(pod.ns); // the name goes; QEMU keeps the namespace alive until it exits
  const kill = hakoSync(["kill", id, "KILL"]);
  assert.equal(kill.status, 0, kill.stderr);
  assert.equal(await run.exited, 137, run.err().slice(-2000));
  assert.doesNotMatch(run.err(), /"level":50|hako: /, "no error from the teardown");
});

test("a bundle naming a network namespace that does not exist fails before any VM starts", { skip }, async () => {
  const r = await hako(["run", "--bundle", netBundle("true", `/run/netns/hako-test-${tag}-missing`), newId()]);
  assert.equal(r.status, 125);
  assert.match(r.stderr, /hako: network namespace \/run\/netns\/hako-test-\w+-missing \(config\.json linux\.namespaces\) does not exist/);
});
