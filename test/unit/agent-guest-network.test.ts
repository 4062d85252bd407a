// The agent's guest network set-up: the commands built for UpdateInterface,
// UpdateRoutes and AddARPNeighbors, and how a failed script is reported.
// (The real thing runs in a VM in test/integration/pod-network.test.ts.)
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  buildScript,
  failedCommand,
  inArrivalOrder,
  interfaceCommands,
  listLinks,
  neighborCommands,
  routeCommands,
  runCommands,
  waitForLinks,
} from "../../src/agent/guest-network.js";
import { shQuote } from "../../src/agent/helper-shell.js";
import { AgentError } from "../../src/runtime/errors.js";
import { Code } from "../../src/protocols/ttrpc/status.js";

const LINKS = [
  { name: "lo", mac: "00:00:00:00:00:00", up: true },
  { name: "eth0", mac: "52:54:00:12:34:56", up: false },
];
const POD_MAC = "0a:58:0a:d5:07:02";
const iface = (over: Partial<Parameters<typeof interfaceCommands>[0]> = {}): Parameters<typeof interfaceCommands>[0] => ({
  device: "",
  name: "eth0",
  hwAddr: POD_MAC.toUpperCase(),
  mtu: 1400,
  addresses: [
    { family: 4, address: "10.213.7.2", prefixLength: 24 },
    { family: 6, address: "fd00:213::2", prefixLength: 64 },
  ],
  ...over,
});
const hasAll = (): boolean => true;

function agentError(code: Code, re: RegExp): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof AgentError, String(e));
    assert.equal(e.code, code);
    assert.match(e.message, re);
    return true;
  };
}

test("UpdateInterface on a fresh NIC (down, never configured): the addresses, then one ip link set for name, MTU and up", () => {
  const links = [{ name: "lo", mac: "00:00:00:00:00:00", up: true }, { name: "eth0", mac: POD_MAC, up: false }];
  const { device, commands } = interfaceCommands(iface(), links, () => false);
  assert.equal(device, "eth0");
  assert.deepEqual(commands, [
    ["ip", "addr", "add", "10.213.7.2/24", "dev", "eth0"],
    ["ip", "addr", "add", "fd00:213::2/64", "dev", "eth0"],
    ["ip", "link", "set", "dev", "eth0", "mtu", "1400", "up"],
  ]);
  const renamed = interfaceCommands(iface({ name: "net0", mtu: 0, addresses: [] }), links, () => false);
  assert.deepEqual(renamed.commands, [["ip", "link", "set", "dev", "eth0", "name", "net0", "up"]]);
});

test("UpdateInterface on a NIC that is up or was configured: down and flush first, so the addresses are replaced", () => {
  const up = [{ name: "eth0", mac: POD_MAC, up: true }];
  assert.deepEqual(interfaceCommands(iface({ addresses: [iface().addresses[0]!] }), up, () => false).commands, [
    ["ip", "link", "set", "dev", "eth0", "down"],
    ["ip", "addr", "flush", "dev", "eth0"],
    ["ip", "addr", "add", "10.213.7.2/24", "dev", "eth0"],
    ["ip", "link", "set", "dev", "eth0", "mtu", "1400", "up"],
  ]);
  const down = [{ name: "eth0", mac: POD_MAC, up: false }];
  assert.deepEqual(interfaceCommands(iface({ addresses: [] }), down, (n) => n === "eth0").commands, [
    ["ip", "addr", "flush", "dev", "eth0"],
    ["ip", "link", "set", "dev", "eth0", "mtu", "1400", "up"],
  ]);
});

test("UpdateInterface: renames the NIC, moving a link that holds the wanted name out of the way; MTU 0 is left alone", () => {
  const links = [...LINKS, { name: "eth1", mac: POD_MAC, up: false }, { name: "hako0", mac: "02:00:00:00:00:99", up: false }];
  const { device, commands } = interfaceCommands(iface({ mtu: 0, addresses: [] }), links, () => false);
  assert.equal(device, "eth0");
  assert.deepEqual(commands, [
    ["ip", "link", "set", "dev", "eth0", "down"],
    ["ip", "link", "set", "dev", "eth0", "name", "hako1"],
    ["ip", "link", "set", "dev", "eth1", "name", "eth0", "up"],
  ]);
  const byName = interfaceCommands(iface({ device: "eth1", hwAddr: "", name: "net1", addresses: [] }), links, () => false);
  assert.deepEqual(byName.commands, [["ip", "link", "set", "dev", "eth1", "name", "net1", "mtu", "1400", "up"]]);
});

test("UpdateInterface: a MAC the guest does not have is NOT_FOUND and lists what the guest has", () => {
  assert.throws(() => interfaceCommands(iface(), LINKS), agentError(Code.NOT_FOUND, /UpdateInterface eth0: no guest interface with MAC 0a:58:0a:d5:07:02; the guest has: eth0 \(52:54:00:12:34:56\).*VmSpec\.network/));
});

test("UpdateInterface: bad input is INVALID_ARGUMENT before anything runs", () => {
  const links = [{ name: "eth0", mac: POD_MAC, up: false }];
  const cases: Array<[Partial<Parameters<typeof interfaceCommands>[0]>, RegExp]> = [
    [{ name: "eth0; reboot" }, /interface name "eth0; reboot" is not a valid interface name/],
    [{ name: "" }, /is not a valid interface name/],
    [{ hwAddr: "0a:58:0a" }, /hardware address "0a:58:0a" is not a MAC address/],
    [{ hwAddr: "", device: "" }, /neither a device nor a hardware address/],
    [{ mtu: 67 }, /MTU 67 is outside 68\.\.65535/],
    [{ addresses: [{ family: 4, address: "10.0.0.300", prefixLength: 24 }] }, /address "10\.0\.0\.300" is not an IP address/],
    [{ addresses: [{ family: 4, address: "10.0.0.3", prefixLength: 33 }] }, /prefix length 33/],
    [{ addresses: [{ family: 6, address: "10.0.0.3", prefixLength: 24 }] }, /is not of family 6/],
  ];
  for (const [over, re] of cases) assert.throws(() => interfaceCommands(iface(over), links), agentError(Code.INVALID_ARGUMENT, re));
});

test("UpdateRoutes: connected routes first, then gateways; IPv6 with -6; scope and source spelled out", () => {
  const cmds = routeCommands(
    [
      { dest: "0.0.0.0/0", gateway: "10.213.7.1", device: "eth0", source: "", scope: 0 },
      { dest: "10.213.7.0/24", gateway: "", device: "eth0", source: "10.213.7.2", scope: 253 },
      { dest: "10.213.8.5", gateway: "", device: "eth0", source: "", scope: 253 },
      { dest: "::/0", gateway: "fe80::1", device: "eth0", source: "", scope: 0 },
      { dest: "192.168.0.0/16", gateway: "10.213.7.254", device: "eth0", source: "", scope: 200 },
    ],
    hasAll,
  );
  assert.deepEqual(cmds, [
    ["ip", "route", "replace", "10.213.7.0/24", "dev", "eth0", "scope", "link", "src", "10.213.7.2"],
    ["ip", "route", "replace", "10.213.8.5", "dev", "eth0", "scope", "link"],
    ["ip", "route", "replace", "0.0.0.0/0", "via", "10.213.7.1", "dev", "eth0", "scope", "global"],
    ["ip", "-6", "route", "replace", "::/0", "via", "fe80::1", "dev", "eth0", "scope", "global"],
    ["ip", "route", "replace", "192.168.0.0/16", "via", "10.213.7.254", "dev", "eth0", "scope", "site"],
  ]);
  assert.deepEqual(routeCommands([], hasAll), []);
});

test("UpdateRoutes: bad routes are refused with what is wrong; a missing device is FAILED_PRECONDITION", () => {
  const r = { dest: "10.1.0.0/16", gateway: "10.213.7.1", device: "eth0", source: "", scope: 0 };
  assert.throws(() => routeCommands([{ ...r, dest: "10.1.0.0/40" }], hasAll), agentError(Code.INVALID_ARGUMENT, /route to 10\.1\.0\.0\/40.*bad prefix length/));
  assert.throws(() => routeCommands([{ ...r, dest: "default" }], hasAll), agentError(Code.INVALID_ARGUMENT, /destination "default" is not an IP address/));
  assert.throws(() => routeCommands([{ ...r, gateway: "fe80::1" }], hasAll), agentError(Code.INVALID_ARGUMENT, /gateway fe80::1 is not of the destination's family/));
  assert.throws(() => routeCommands([{ ...r, scope: 7 }], hasAll), agentError(Code.INVALID_ARGUMENT, /scope 7 is not one of 0 \(global\), 200 \(site\), 253 \(link\)/));
  assert.throws(() => routeCommands([r], (d) => d !== "eth0"), agentError(Code.FAILED_PRECONDITION, /device eth0 does not exist in the guest.*UpdateInterface/));
});

test("AddARPNeighbors: arp -s per IPv4 neighbour; IPv6 is UNIMPLEMENTED; only permanent entries", () => {
  const n = { toIpAddress: "10.213.7.9", device: "eth0", llAddr: "02:00:00:00:00:09", state: 0x80 };
  assert.deepEqual(neighborCommands([n, { ...n, toIpAddress: "10.213.7.10", llAddr: "02:00:00:00:00:0A", state: 0 }], hasAll), [
    ["arp", "-i", "eth0", "-s", "10.213.7.9", "02:00:00:00:00:09"],
    ["arp", "-i", "eth0", "-s", "10.213.7.10", "02:00:00:00:00:0a"],
  ]);
  assert.throws(() => neighborCommands([{ ...n, toIpAddress: "fd00::9" }], hasAll), agentError(Code.UNIMPLEMENTED, /static IPv6 neighbours are not supported/));
  assert.throws(() => neighborCommands([{ ...n, state: 0x02 }], hasAll), agentError(Code.INVALID_ARGUMENT, /state 0x2 is not supported/));
  assert.throws(() => neighborCommands([{ ...n, llAddr: "zz" }], hasAll), agentError(Code.INVALID_ARGUMENT, /"zz" is not a MAC address/));
  assert.throws(() => neighborCommands([n], () => false), agentError(Code.FAILED_PRECONDITION, /device eth0 does not exist/));
});

test("buildScript marks each command and stops at the first failure; failedCommand tells it from earlier warnings", () => {
  const script = buildScript([["ip", "link", "set", "dev", "eth0", "up"], ["echo", "it's"]]);
  assert.equal(script, `r() { printf '%s %s\\n' hako-net-run: "$*" >&2; "$@" || exit $?; }\nr ip link set dev eth0 up\nr echo 'it'\\''s'\n`);
  assert.equal(shQuote("a b"), "'a b'");
  assert.deepEqual(failedCommand("hako-net-run: ip link set dev eth0 up\nwarning: x\nhako-net-run: ip addr add 1.2.3.4/8 dev eth0\nip: RTNETLINK answers: File exists\n"), {
    command: "ip addr add 1.2.3.4/8 dev eth0",
    output: "ip: RTNETLINK answers: File exists",
  });
  assert.deepEqual(failedCommand("sh: syntax error\n"), { command: "", output: "sh: syntax error" });
});

test("runCommands runs one script with sh: quoting survives, a failure names the RPC, command and output", async () => {
  const dir = mkdtempSync(join(tmpdir(), "hako-gn-"));
  try {
    const out = join(dir, "out");
    const write = ["sh", "-c", 'printf "%s|" "$@" > "$0"', out, "a b", "it's", "$HOME", "x;y"];
    await runCommands("Test", [write, ["true"]], "no hint");
    assert.equal(readFileSync(out, "utf8"), "a b|it's|$HOME|x;y|");
    // One command runs without a shell around it; its failure reads the same.
    await runCommands("Test", [write.map((w) => w.replace("x;y", "z"))], "no hint");
    assert.equal(readFileSync(out, "utf8"), "a b|it's|$HOME|z|");
    await assert.rejects(
      runCommands("UpdateRoutes", [["sh", "-c", "echo 'RTNETLINK answers: File exists' >&2; exit 2"]], "h"),
      agentError(Code.INTERNAL, /^UpdateRoutes: `sh -c echo 'RTNETLINK answers: File exists' >&2; exit 2` failed: RTNETLINK answers: File exists \(h\)$/),
    );
    await assert.rejects(
      runCommands("UpdateRoutes", [["sh", "-c", "echo early warning >&2"], ["sh", "-c", "echo 'RTNETLINK answers: Network is unreachable' >&2; exit 2"], ["touch", join(dir, "never")]], "check the routes"),
      agentError(Code.INTERNAL, /^UpdateRoutes: `sh -c echo 'RTNETLINK answers: Network is unreachable' >&2; exit 2` failed: RTNETLINK answers: Network is unreachable \(check the routes\)$/),
    );
    assert.equal(existsSync(join(dir, "never")), false, "stops at the first failure");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const sysDir = mkdtempSync(join(tmpdir(), "hako-sysnet-"));
after(() => rmSync(sysDir, { recursive: true, force: true }));

test("listLinks reads names and MACs from sysfs; waitForLinks waits for a MAC to appear", async () => {
  const add = (name: string, mac: string, flags?: string): void => {
    mkdirSync(join(sysDir, name));
    writeFileSync(join(sysDir, name, "address"), `${mac}\n`);
    if (flags !== undefined) writeFileSync(join(sysDir, name, "flags"), `${flags}\n`);
  };
  add("lo", "00:00:00:00:00:00", "0x9");
  assert.deepEqual(listLinks(sysDir), [{ name: "lo", mac: "00:00:00:00:00:00", up: true }]);
  assert.deepEqual(listLinks(join(sysDir, "missing")), []);
  setTimeout(() => add("eth0", POD_MAC.toUpperCase(), "0x1002"), 120);
  const t0 = Date.now();
  const links = await waitForLinks(POD_MAC, 2000, sysDir);
  assert.ok(links.some((l) => l.name === "eth0" && l.mac === POD_MAC && !l.up));
  assert.ok(Date.now() - t0 < 1500);
  const none = await waitForLinks("02:00:00:00:00:77", 100, sysDir);
  assert.equal(none.length, 2, "gives up after the timeout with what there is");
});

test("UpdateInterface by device (a VM cloned from a template): the NIC gets the pod's MAC", () => {
  const { commands } = interfaceCommands(iface({ device: "eth0", addresses: [] }), LINKS, () => false);
  assert.deepEqual(commands, [["ip", "link", "set", "dev", "eth0", "mtu", "1400", "address", POD_MAC, "up"]]);
  // Already the pod's MAC: no address change.
  const same = interfaceCommands(iface({ device: "eth0", addresses: [] }), [{ name: "eth0", mac: POD_MAC, up: false }], () => false);
  assert.deepEqual(same.commands, [["ip", "link", "set", "dev", "eth0", "mtu", "1400", "up"]]);
});

test("inArrivalOrder (the agent's network RPCs): each starts after the one before settled, failed or not", async () => {
  const step = inArrivalOrder();
  const log: string[] = [];
  const slow = step(async () => {
    log.push("a start");
    await new Promise((r) => setTimeout(r, 20));
    log.push("a end");
    throw new Error("a failed");
  });
  const fast = step(async () => {
    log.push("b");
    return 2;
  });
  await assert.rejects(slow, /a failed/);
  assert.equal(await fast, 2);
  assert.deepEqual(log, ["a start", "a end", "b"]);
});
