import { test } from "node:test";
import assert from "node:assert/strict";
import { parseAddrJson, parseJsonArray, parseNeighJson, parseRouteJson, scanNetns } from "../../src/resource/network/netns-scan.js";
import { NetnsCommandError, type NetnsRunner } from "../../src/resource/network/netns-exec.js";
import { ResourceError } from "../../src/runtime/errors.js";

// Captured from iproute2-6.1.0 in a test netns: lo, a veth with v4 + v6
// addresses, a hako tap, and a tunnel device the ipip module adds.
const ADDR = JSON.stringify([
  { ifindex: 1, ifname: "lo", flags: ["LOOPBACK", "UP"], mtu: 65536, link_type: "loopback", address: "00:00:00:00:00:00",
    addr_info: [{ family: "inet", local: "127.0.0.1", prefixlen: 8, scope: "host" }] },
  { ifindex: 2, ifname: "tunl0", flags: ["NOARP"], mtu: 1480, link_type: "ipip", address: "0.0.0.0", addr_info: [] },
  { ifindex: 3, link_index: 2, ifname: "eth0", flags: ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"], mtu: 1400, link_type: "ether",
    address: "D2:6F:15:5F:79:8B", broadcast: "ff:ff:ff:ff:ff:ff", link_netnsid: 0,
    addr_info: [
      { family: "inet", local: "10.123.9.1", prefixlen: 24, scope: "global", label: "eth0" },
      { family: "inet6", local: "fd00::1", prefixlen: 64, scope: "global", nodad: true },
      { family: "inet6", local: "fe80::d06f:15ff:fe5f:798b", prefixlen: 64, scope: "link", tentative: true },
    ] },
  { ifindex: 4, ifname: "tap0_hako", flags: ["NO-CARRIER", "BROADCAST", "MULTICAST", "UP"], mtu: 1400, link_type: "ether",
    address: "96:a8:dc:e6:d2:4e", addr_info: [] },
  { ifindex: 5, ifname: "net1", flags: ["BROADCAST"], mtu: 9000, link_type: "ether", address: "02:00:00:00:00:09", addr_info: [] },
]);

const ROUTE4 = '[{"dst":"default","gateway":"10.123.9.2","dev":"eth0","flags":[]},' +
  '{"dst":"10.123.9.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.123.9.1","flags":[]},' +
  '{"dst":"10.200.0.7","gateway":"10.123.9.3","dev":"eth0","flags":["onlink"]},' +
  '{"type":"blackhole","dst":"10.99.0.0/16","flags":[]},' +
  '{"dst":"192.168.0.0/16","dev":"tunl0","scope":"link","flags":[]}]';

const ROUTE6 = '[{"dst":"fd00::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},' +
  '{"dst":"fe80::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},' +
  '{"dst":"default","gateway":"fd00::fe","dev":"eth0","metric":1024,"flags":[],"pref":"medium"}]';

const NEIGH = '[{"dst":"10.123.9.5","dev":"eth0","lladdr":"02:00:00:00:00:05","state":["PERMANENT"]},' +
  '{"dst":"10.123.9.2","dev":"eth0","lladdr":"aa:bb:cc:dd:ee:ff","state":["REACHABLE"]},' +
  '{"dst":"10.123.9.8","dev":"eth0","state":["FAILED"]},' +
  '{"dst":"fd00::5","dev":"eth0","lladdr":"02:00:00:00:00:06","state":["PERMANENT"]},' +
  '{"dst":"10.1.1.1","dev":"tap0_hako","lladdr":"02:00:00:00:00:07","state":["PERMANENT"]}]';

test("parseAddrJson keeps Ethernet interfaces, skips lo, tunnels and hako taps, drops v6 link-local", () => {
  const ifs = parseAddrJson(ADDR);
  assert.deepEqual(ifs, [
    { name: "eth0", mac: "d2:6f:15:5f:79:8b", mtu: 1400, addresses: [
      { family: 4, address: "10.123.9.1", prefixLength: 24 },
      { family: 6, address: "fd00::1", prefixLength: 64 },
    ] },
    { name: "net1", mac: "02:00:00:00:00:09", mtu: 9000, addresses: [] },
  ]);
  assert.deepEqual(parseAddrJson(ADDR, { skip: ["net1"] }).map((i) => i.name), ["eth0"]);
});

test("parseRouteJson normalises destinations and scopes, keeps only unicast routes on known devices", () => {
  const devs = new Set(["eth0"]);
  assert.deepEqual(parseRouteJson(ROUTE4, 4, devs), [
    { family: 4, dest: "0.0.0.0/0", gateway: "10.123.9.2", device: "eth0", scope: "global", source: "" },
    { family: 4, dest: "10.123.9.0/24", gateway: "", device: "eth0", scope: "link", source: "10.123.9.1" },
    { family: 4, dest: "10.200.0.7/32", gateway: "10.123.9.3", device: "eth0", scope: "global", source: "" },
  ]);
  assert.deepEqual(parseRouteJson(ROUTE6, 6, devs), [
    { family: 6, dest: "fd00::/64", gateway: "", device: "eth0", scope: "global", source: "" },
    { family: 6, dest: "::/0", gateway: "fd00::fe", device: "eth0", scope: "global", source: "" },
  ]);
  assert.throws(() => parseRouteJson('[{"dst":"1.2.3.0/24","dev":"eth0","scope":"253x"}]', 4, devs), /unknown route scope/);
});

test("parseNeighJson keeps permanent entries with a MAC on known devices", () => {
  assert.deepEqual(parseNeighJson(NEIGH, new Set(["eth0"])), [
    { family: 4, ip: "10.123.9.5", mac: "02:00:00:00:00:05", device: "eth0" },
    { family: 6, ip: "fd00::5", mac: "02:00:00:00:00:06", device: "eth0" },
  ]);
});

test("parseJsonArray: empty output is an empty list, garbage is an error", () => {
  assert.deepEqual(parseJsonArray("\n", "x"), []);
  assert.throws(() => parseJsonArray("Error: oops", "ip -j addr"), /ip -j addr: output is not JSON/);
  assert.throws(() => parseJsonArray('{"a":1}', "x"), /expected a JSON array/);
});

test("scanNetns runs ip -j addr/route/neigh through the runner and joins the results", async () => {
  const calls: string[] = [];
  const runner: NetnsRunner = async (tool, args) => {
    const cmd = `${tool} ${args.join(" ")}`;
    calls.push(cmd);
    if (cmd === "ip -j addr show") return ADDR;
    if (cmd === "ip -j -4 route show table main") return ROUTE4;
    if (cmd === "ip -j -6 route show table main") throw new NetnsCommandError("/ns", cmd, "RTNETLINK answers: Address family not supported by protocol", 2);
    if (cmd === "ip -j neigh show") return NEIGH;
    throw new Error(`unexpected ${cmd}`);
  };
  const scan = await scanNetns("/ns", { runner });
  assert.equal(calls.length, 4);
  assert.deepEqual(scan.interfaces.map((i) => i.name), ["eth0", "net1"]);
  assert.equal(scan.routes.length, 3);
  assert.ok(scan.routes.every((r) => r.family === 4));
  assert.equal(scan.neighbors.length, 2);
});

test("scanNetns wraps failures in a ResourceError naming the netns", async () => {
  const runner: NetnsRunner = async () => {
    throw new NetnsCommandError("/var/run/netns/gone", "ip -j addr show", "nsenter: cannot open /var/run/netns/gone: No such file or directory", 1);
  };
  await assert.rejects(scanNetns("/var/run/netns/gone", { runner }), (err: unknown) => {
    assert.ok(err instanceof ResourceError);
    assert.equal(err.id, "/var/run/netns/gone");
    assert.match(err.message, /scanning network namespace \/var\/run\/netns\/gone failed/);
    assert.match(err.message, /the netns is gone/);
    return true;
  });
});
