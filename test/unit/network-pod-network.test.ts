import { test } from "node:test";
import assert from "node:assert/strict";
import { PodNetwork, isPodNetworkRecord, removeRecordedNetwork } from "../../src/resource/network/pod-network.js";
import { HAKO_FILTER_PREF } from "../../src/resource/network/tc-filter-endpoint.js";
import { NetnsCommandError, type NetnsRunner } from "../../src/resource/network/netns-exec.js";
import { ResourceError } from "../../src/runtime/errors.js";

const NS = "/var/run/netns/cni-fake";
const P = String(HAKO_FILTER_PREF);
const ADDR = JSON.stringify([
  { ifname: "lo", mtu: 65536, link_type: "loopback", address: "00:00:00:00:00:00", addr_info: [] },
  { ifname: "eth0", mtu: 1400, link_type: "ether", address: "0A:58:0A:D5:07:02", addr_info: [{ family: "inet", local: "10.213.7.2", prefixlen: 24 }] },
  { ifname: "net1", mtu: 9000, link_type: "ether", address: "02:00:00:00:00:09", addr_info: [] },
]);
const ROUTE4 = JSON.stringify([{ dst: "default", gateway: "10.213.7.1", dev: "eth0" }, { dst: "10.213.7.0/24", dev: "eth0", scope: "link", prefsrc: "10.213.7.2" }]);

function fakeNetns(rules: Array<(cmd: string) => string | NetnsCommandError | undefined> = []): { runner: NetnsRunner; calls: string[] } {
  const calls: string[] = [];
  const runner: NetnsRunner = async (tool, args) => {
    const cmd = `${tool} ${args.join(" ")}`;
    calls.push(cmd);
    for (const r of rules) {
      const out = r(cmd);
      if (out instanceof NetnsCommandError) throw out;
      if (out !== undefined) return out;
    }
    if (cmd === "ip -j addr show") return ADDR;
    if (cmd === "ip -j -4 route show table main") return ROUTE4;
    return "[]";
  };
  return { runner, calls };
}

test("open scans once and plans tap0_hako, tap1_hako, … from the scanned MACs/MTUs without touching the netns", async () => {
  const { runner, calls } = fakeNetns();
  const net = await PodNetwork.open(NS, { runner });
  assert.equal(calls.length, 4, "the four scan commands, nothing else");
  assert.deepEqual(net.endpoints.map((e) => [e.name, e.tapName, e.mac, e.mtu]), [
    ["eth0", "tap0_hako", "0a:58:0a:d5:07:02", 1400],
    ["net1", "tap1_hako", "02:00:00:00:00:09", 9000],
  ]);
  assert.deepEqual(net.scan.routes.map((r) => r.dest), ["0.0.0.0/0", "10.213.7.0/24"]);
  assert.deepEqual(net.record(), {
    model: "tcfilter",
    netnsPath: NS,
    endpoints: [
      { veth: "eth0", tap: "tap0_hako", mac: "0a:58:0a:d5:07:02", mtu: 1400, ownVethQdisc: false },
      { veth: "net1", tap: "tap1_hako", mac: "02:00:00:00:00:09", mtu: 9000, ownVethQdisc: false },
    ],
  });
});

test("attach plumbs every interface; the record then claims the qdiscs it added; a rebuilt record detaches the same", async () => {
  const { runner, calls } = fakeNetns();
  const net = await PodNetwork.open(NS, { runner });
  calls.length = 0;
  await net.attach();
  assert.equal(calls.filter((c) => c.startsWith("ip tuntap add")).length, 2);
  const rec = net.record();
  assert.ok(rec.endpoints.every((e) => e.ownVethQdisc));
  assert.ok(isPodNetworkRecord(JSON.parse(JSON.stringify(rec))));

  const later = fakeNetns();
  await removeRecordedNetwork(JSON.parse(JSON.stringify(rec)), { runner: later.runner });
  assert.deepEqual(later.calls, ["tc qdisc del dev eth0 ingress", "ip link del dev tap0_hako", "tc qdisc del dev net1 ingress", "ip link del dev tap1_hako"]);
});

test("a failure on the second interface removes what the first one added", async () => {
  const { runner, calls } = fakeNetns([(c) => (c === "ip tuntap add dev tap1_hako mode tap" ? new NetnsCommandError(NS, c, "ioctl(TUNSETIFF): Operation not permitted", 1) : undefined)]);
  const net = await PodNetwork.open(NS, { runner });
  await assert.rejects(net.attach(), (e: unknown) => e instanceof ResourceError && /creating tap on tap1_hako/.test(e.message));
  assert.ok(calls.includes("tc qdisc del dev eth0 ingress"));
  assert.ok(calls.includes("ip link del dev tap0_hako"));
  assert.ok(!calls.includes("ip link del dev tap1_hako"), "never created, never deleted");
});

test("detach with the netns gone is clean; real failures on several endpoints are reported together", async () => {
  const gone = fakeNetns([(c) => new NetnsCommandError(NS, c, `nsenter: cannot open ${NS}: No such file or directory`, 1)]);
  await PodNetwork.fromRecord({ model: "tcfilter", netnsPath: NS, endpoints: [{ veth: "eth0", tap: "tap0_hako", mac: "02:00:00:00:00:01", mtu: 1500, ownVethQdisc: false }] }, { runner: gone.runner }).detach();
  assert.deepEqual(gone.calls, [`tc filter del dev eth0 parent ffff: protocol all pref ${P} u32`]);

  const eperm = fakeNetns([(c) => (c.startsWith("ip link del") ? new NetnsCommandError(NS, c, "RTNETLINK answers: Operation not permitted", 2) : undefined)]);
  const rec = {
    model: "tcfilter" as const,
    netnsPath: NS,
    endpoints: [
      { veth: "eth0", tap: "tap0_hako", mac: "02:00:00:00:00:01", mtu: 1500, ownVethQdisc: true },
      { veth: "net1", tap: "tap1_hako", mac: "02:00:00:00:00:02", mtu: 1500, ownVethQdisc: true },
    ],
  };
  await assert.rejects(PodNetwork.fromRecord(rec, { runner: eperm.runner }).detach(), (e: unknown) => {
    assert.ok(e instanceof ResourceError);
    assert.match(e.message, /removing 2 endpoints from netns \/var\/run\/netns\/cni-fake failed: .*tap0_hako.*\|.*tap1_hako/);
    return true;
  });
});

test("removeRecordedNetwork ignores what is not a record (no network, older state.json)", async () => {
  const { runner, calls } = fakeNetns();
  for (const v of [undefined, null, {}, { model: "macvtap", netnsPath: NS, endpoints: [] }, { model: "tcfilter", netnsPath: "", endpoints: [] }, { model: "tcfilter", netnsPath: NS, endpoints: [{ veth: "eth0" }] }]) {
    assert.equal(isPodNetworkRecord(v), false, JSON.stringify(v));
    await removeRecordedNetwork(v, { runner });
  }
  assert.deepEqual(calls, []);
});
