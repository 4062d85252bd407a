import { test } from "node:test";
import assert from "node:assert/strict";
import { HAKO_FILTER_PREF, parseBatchFailure, TcFilterEndpoint } from "../../src/resource/network/tc-filter-endpoint.js";
import { NetnsCommandError, namedNetns, type NetnsRunner } from "../../src/resource/network/netns-exec.js";
import { ResourceError } from "../../src/runtime/errors.js";

const NS = "/var/run/netns/fake";
const LINKS = JSON.stringify([
  { ifindex: 1, ifname: "lo", mtu: 65536, link_type: "loopback", address: "00:00:00:00:00:00" },
  { ifindex: 2, ifname: "eth0", mtu: 1450, link_type: "ether", address: "0A:58:0A:F4:00:05" },
  { ifindex: 3, ifname: "tap0_hako", mtu: 1500, link_type: "ether", address: "96:a8:dc:e6:d2:4e" },
]);

type Rule = (cmd: string) => string | NetnsCommandError | undefined;

/**
 * A fake netns: records commands; the first rule that answers decides the
 * result, default "". `tc -batch -` runs its input's lines as commands of
 * their own, in order, and stops at the first failure with tc's report
 * ("Command failed -:N"); `spawns` counts the processes a real netns would run.
 */
function fakeRunner(rules: Rule[] = []): { runner: NetnsRunner; calls: string[]; spawns: string[] } {
  const calls: string[] = [];
  const spawns: string[] = [];
  const one = (cmd: string): string => {
    calls.push(cmd);
    if (cmd === "ip -j link show") return LINKS;
    for (const r of rules) {
      const out = r(cmd);
      if (out instanceof NetnsCommandError) throw out;
      if (out !== undefined) return out;
    }
    return "";
  };
  const runner: NetnsRunner = async (tool, args, input) => {
    spawns.push(`${tool} ${args.join(" ")}`);
    if (tool !== "tc" || args.join(" ") !== "-batch -") return one(`${tool} ${args.join(" ")}`);
    const lines = (input ?? "").split("\n").filter((l) => l !== "");
    let out = "";
    for (const [i, line] of lines.entries()) {
      try {
        out += one(`tc ${line}`);
      } catch (err) {
        if (!(err instanceof NetnsCommandError)) throw err;
        throw new NetnsCommandError(NS, "tc -batch -", `${err.stderr}\nCommand failed -:${i + 1}\n`, 1);
      }
    }
    return out;
  };
  return { runner, calls, spawns };
}

const fail = (cmd: string, stderr: string): NetnsCommandError => new NetnsCommandError(NS, cmd, stderr, 2);
const P = String(HAKO_FILTER_PREF);

test("create reads the veth's MAC and MTU and picks the first free tap name", async () => {
  const { runner, calls } = fakeRunner();
  const ep = await TcFilterEndpoint.create({ netnsPath: NS, veth: "eth0", runner });
  assert.equal(ep.name, "eth0");
  assert.equal(ep.mac, "0a:58:0a:f4:00:05");
  assert.equal(ep.mtu, 1450);
  assert.equal(ep.tapName, "tap1_hako");
  assert.deepEqual(calls, ["ip -j link show"]);
  assert.equal((await TcFilterEndpoint.create({ netnsPath: NS, veth: "eth0", runner, tapIndex: 7 })).tapName, "tap7_hako");
});

test("create refuses a missing interface and a hako tap", async () => {
  const { runner } = fakeRunner();
  await assert.rejects(TcFilterEndpoint.create({ netnsPath: NS, veth: "eth9", runner }), (e: unknown) => e instanceof ResourceError && /eth9 not found in netns \/var\/run\/netns\/fake/.test(e.message));
  await assert.rejects(TcFilterEndpoint.create({ netnsPath: NS, veth: "tap0_hako", runner }), /is a hako tap/);
});

test("attach creates tap, two ingress qdiscs and both redirects; detach removes only those", async () => {
  const { runner, calls, spawns } = fakeRunner();
  const ep = await TcFilterEndpoint.create({ netnsPath: NS, veth: "eth0", runner, tapIndex: 0 });
  calls.length = 0;
  spawns.length = 0;
  await ep.attach();
  await ep.attach(); // no-op
  assert.deepEqual(calls, [
    "ip tuntap add dev tap0_hako mode tap",
    "ip link set dev tap0_hako mtu 1450 up",
    "tc qdisc add dev eth0 ingress",
    "tc qdisc add dev tap0_hako ingress",
    `tc filter add dev eth0 parent ffff: protocol all pref ${P} u32 match u32 0 0 action mirred egress redirect dev tap0_hako`,
    `tc filter add dev tap0_hako parent ffff: protocol all pref ${P} u32 match u32 0 0 action mirred egress redirect dev eth0`,
  ]);
  // The four tc commands are one process.
  assert.deepEqual(spawns, ["ip tuntap add dev tap0_hako mode tap", "ip link set dev tap0_hako mtu 1450 up", "tc -batch -"]);
  calls.length = 0;
  await ep.detach();
  await ep.detach(); // idempotent: nothing left to remove
  assert.deepEqual(calls, ["tc qdisc del dev eth0 ingress", "ip link del dev tap0_hako"]);
});

test("qdisc add is retried on EBUSY, then succeeds", async () => {
  let busy = 2;
  const { runner, calls } = fakeRunner([(c) => (c === "tc qdisc add dev eth0 ingress" && busy-- > 0 ? fail(c, "Error: Device or resource busy") : undefined)]);
  const ep = await TcFilterEndpoint.create({ netnsPath: NS, veth: "eth0", runner, tapIndex: 0 });
  const t0 = Date.now();
  await ep.attach();
  assert.equal(calls.filter((c) => c === "tc qdisc add dev eth0 ingress").length, 3);
  assert.ok(Date.now() - t0 >= 15);
});

test("EBUSY that persists fails after 5 attempts and rolls back the tap", async () => {
  const { runner, calls } = fakeRunner([(c) => (c === "tc qdisc add dev eth0 ingress" ? fail(c, "RTNETLINK answers: Device or resource busy") : undefined)]);
  const ep = await TcFilterEndpoint.create({ netnsPath: NS, veth: "eth0", runner, tapIndex: 0 });
  await assert.rejects(ep.attach(), (e: unknown) => {
    assert.ok(e instanceof ResourceError);
    assert.match(e.message, /adding the ingress qdisc on eth0 in netns \/var\/run\/netns\/fake failed: RTNETLINK answers: Device or resource busy/);
    assert.match(e.message, /sch_ingress/);
    return true;
  });
  assert.equal(calls.filter((c) => c === "tc qdisc add dev eth0 ingress").length, 5);
  assert.equal(calls.at(-1), "ip link del dev tap0_hako");
  assert.ok(!calls.includes("tc qdisc del dev eth0 ingress"), "never had the veth qdisc, never deletes it");
});

test("an existing ingress qdisc on the veth is shared: only our filter is removed", async () => {
  const { runner, calls } = fakeRunner([(c) => (c === "tc qdisc add dev eth0 ingress" ? fail(c, "Error: Exclusivity flag on, cannot modify.") : undefined)]);
  const ep = await TcFilterEndpoint.create({ netnsPath: NS, veth: "eth0", runner, tapIndex: 0 });
  await ep.attach();
  calls.length = 0;
  await ep.detach();
  assert.deepEqual(calls, [`tc filter del dev eth0 parent ffff: protocol all pref ${P} u32`, "ip link del dev tap0_hako"]);
});

test("a redirect that fails in the batch is thrown; what the batch did before it is undone", async () => {
  const bad = `tc filter add dev tap0_hako parent ffff: protocol all pref ${P} u32 match u32 0 0 action mirred egress redirect dev eth0`;
  const { runner, calls } = fakeRunner([(c) => (c === bad ? fail(c, "Error: Filter with specified priority/protocol not found.") : undefined)]);
  const ep = await TcFilterEndpoint.create({ netnsPath: NS, veth: "eth0", runner, tapIndex: 0 });
  await assert.rejects(ep.attach(), (e: unknown) => {
    assert.ok(e instanceof ResourceError);
    assert.match(e.message, /adding the redirect filter to eth0 on tap0_hako in netns \/var\/run\/netns\/fake failed: Error: Filter with specified priority\/protocol not found\./);
    assert.doesNotMatch(e.message, /Command failed/);
    return true;
  });
  // The veth's qdisc (ours: it took effect before the failed line) and the tap are removed.
  assert.deepEqual(calls.slice(-2), ["tc qdisc del dev eth0 ingress", "ip link del dev tap0_hako"]);
});

test("parseBatchFailure reads tc's report of the line it stopped at", () => {
  assert.deepEqual(parseBatchFailure("Error: Exclusivity flag on, cannot modify.\nCommand failed -:2\n"), { line: 2, message: "Error: Exclusivity flag on, cannot modify." });
  assert.deepEqual(parseBatchFailure('Cannot find device "v9"\nCommand failed -:3'), { line: 3, message: 'Cannot find device "v9"' });
  assert.equal(parseBatchFailure('Cannot open network namespace "x": No such file or directory\n'), undefined);
});

test("namedNetns: a netns under /run/netns is entered by name (ip -n), any other path through nsenter", () => {
  assert.equal(namedNetns("/var/run/netns/cni-1234"), "cni-1234");
  assert.equal(namedNetns("/run/netns/hako-test"), "hako-test");
  assert.equal(namedNetns("/proc/42/ns/net"), undefined);
  assert.equal(namedNetns("/run/netns/a/b"), undefined);
  assert.equal(namedNetns("/run/netns/.."), undefined);
  assert.ok(new NetnsCommandError(NS, "tc qdisc show", 'Cannot open network namespace "fake": No such file or directory', 1).netnsMissing);
});

test("a stale tap is not adopted; the error says how to remove it", async () => {
  const { runner, calls } = fakeRunner([(c) => (c.startsWith("ip tuntap add") ? fail(c, "ioctl(TUNSETIFF): Device or resource busy") : undefined)]);
  const ep = await TcFilterEndpoint.create({ netnsPath: NS, veth: "eth0", runner, tapIndex: 0 });
  await assert.rejects(ep.attach(), /creating tap on tap0_hako .*already exists.*ip link del tap0_hako/);
  assert.ok(!calls.some((c) => c.includes(" del ")), "nothing deleted: the tap is not ours");
});

test("detach succeeds when the netns is already gone, and when objects are already removed", async () => {
  let gone = false;
  const { runner } = fakeRunner([
    (c) => (gone ? fail(c, `nsenter: cannot open ${NS}: No such file or directory`) : undefined),
    (c) => (c === "tc qdisc del dev eth0 ingress" ? fail(c, "Error: Cannot find specified qdisc on specified device.") : undefined),
  ]);
  const a = await TcFilterEndpoint.create({ netnsPath: NS, veth: "eth0", runner, tapIndex: 0 });
  await a.attach();
  await a.detach();
  await a.attach();
  gone = true;
  await a.detach();
  await a.detach();
});

test("detach reports a real failure with the netns, device and a manual fix, and can be retried", async () => {
  let broken = true;
  const { runner } = fakeRunner([(c) => (c === "ip link del dev tap0_hako" && broken ? fail(c, "RTNETLINK answers: Operation not permitted") : undefined)]);
  const ep = await TcFilterEndpoint.create({ netnsPath: NS, veth: "eth0", runner, tapIndex: 0 });
  await ep.attach();
  await assert.rejects(ep.detach(), (e: unknown) => {
    assert.ok(e instanceof ResourceError);
    assert.equal(e.id, NS);
    assert.match(e.message, /deleting tap tap0_hako/);
    assert.match(e.message, /nsenter --net=\/var\/run\/netns\/fake ip link del tap0_hako/);
    return true;
  });
  broken = false;
  await ep.detach();
});

test("forInterface uses the scanned MAC/MTU without running anything", async () => {
  const { runner, calls } = fakeRunner();
  const ep = TcFilterEndpoint.forInterface({ netnsPath: NS, runner, tapIndex: 2, iface: { name: "eth1", mac: "0A:58:0A:F4:00:06", mtu: 1400 } });
  assert.deepEqual([ep.name, ep.tapName, ep.mac, ep.mtu], ["eth1", "tap2_hako", "0a:58:0a:f4:00:06", 1400]);
  assert.deepEqual(calls, []);
  assert.throws(() => TcFilterEndpoint.forInterface({ netnsPath: NS, runner, tapIndex: 0, iface: { name: "tap0_hako", mac: "02:00:00:00:00:01", mtu: 1500 } }), /is a hako tap/);
});

test("record() says whether the veth qdisc is ours; fromRecord() in another process removes exactly that", async () => {
  const own = fakeRunner();
  const a = await TcFilterEndpoint.create({ netnsPath: NS, veth: "eth0", runner: own.runner, tapIndex: 0 });
  assert.equal(a.record().ownVethQdisc, false, "nothing attached yet: claim nothing");
  await a.attach();
  assert.deepEqual(a.record(), { veth: "eth0", tap: "tap0_hako", mac: "0a:58:0a:f4:00:05", mtu: 1450, ownVethQdisc: true });

  // A later process (hako delete -f) rebuilds the endpoint from the JSON record.
  const later = fakeRunner();
  const b = TcFilterEndpoint.fromRecord(NS, JSON.parse(JSON.stringify(a.record())) as ReturnType<typeof a.record>, { runner: later.runner });
  await b.detach();
  await b.detach();
  assert.deepEqual(later.calls, ["tc qdisc del dev eth0 ingress", "ip link del dev tap0_hako"]);

  const shared = fakeRunner();
  await TcFilterEndpoint.fromRecord(NS, { veth: "eth0", tap: "tap0_hako", mac: "0a:58:0a:f4:00:05", mtu: 1450, ownVethQdisc: false }, { runner: shared.runner }).detach();
  assert.deepEqual(shared.calls, [`tc filter del dev eth0 parent ffff: protocol all pref ${P} u32`, "ip link del dev tap0_hako"]);
});

test("fromRecord().detach() tolerates a netns that is gone and objects already removed", async () => {
  const rec = { veth: "eth0", tap: "tap0_hako", mac: "0a:58:0a:f4:00:05", mtu: 1450, ownVethQdisc: true };
  const gone = fakeRunner([(c) => fail(c, `nsenter: cannot open ${NS}: No such file or directory`)]);
  await TcFilterEndpoint.fromRecord(NS, rec, { runner: gone.runner }).detach();
  assert.equal(gone.calls.length, 1, "stops at the first sign that the netns is gone");
  const removed = fakeRunner([
    (c) => (c.startsWith("tc qdisc del") ? fail(c, "Error: Cannot find specified qdisc on specified device.") : undefined),
    (c) => (c.startsWith("ip link del") ? fail(c, 'Cannot find device "tap0_hako"') : undefined),
  ]);
  await TcFilterEndpoint.fromRecord(NS, rec, { runner: removed.runner }).detach();
  assert.equal(removed.calls.length, 2);
});
