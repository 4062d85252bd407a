// The agent requests the sandbox sends for a scanned pod netns, and their order.
import { test } from "node:test";
import assert from "node:assert/strict";
import { configureGuestNetwork, guestRoutes, interfaceRequest, ipValue, neighborsRequest, routesRequest } from "../../src/runtime/sandbox-network.js";
import type { AgentApi } from "../../src/runtime/agent-client.js";
import type { NetnsScan } from "../../src/resource/network/network-endpoint.js";
import { AgentError } from "../../src/runtime/errors.js";
import { Code, TtrpcError } from "../../src/protocols/ttrpc/status.js";
import { createLogger } from "../../src/runtime/logger.js";

const SCAN: NetnsScan = {
  interfaces: [
    { name: "eth0", mac: "0a:58:0a:d5:07:02", mtu: 1400, addresses: [{ family: 4, address: "10.213.7.2", prefixLength: 24 }, { family: 6, address: "fd00::2", prefixLength: 64 }] },
    { name: "net1", mac: "02:00:00:00:00:09", mtu: 9000, addresses: [] },
  ],
  routes: [
    { family: 4, dest: "0.0.0.0/0", gateway: "10.213.7.1", device: "eth0", scope: "global", source: "" },
    { family: 4, dest: "10.213.7.0/24", gateway: "", device: "eth0", scope: "link", source: "10.213.7.2" },
    { family: 4, dest: "10.9.9.9/32", gateway: "", device: "eth0", scope: "host", source: "" },
  ],
  neighbors: [
    { family: 4, ip: "10.213.7.9", mac: "02:00:00:00:00:05", device: "eth0" },
    { family: 6, ip: "fd00::9", mac: "02:00:00:00:00:06", device: "eth0" },
  ],
};

const quiet = createLogger("test", { level: "silent" });

function fakeAgent(fail?: { method: string; err: Error }): { agent: AgentApi; calls: Array<[string, unknown]> } {
  const calls: Array<[string, unknown]> = [];
  const handler = (method: string) => async (req: unknown): Promise<object> => {
    calls.push([method, req]);
    if (fail?.method === method) throw fail.err;
    return {};
  };
  const agent = { updateInterface: handler("updateInterface"), updateRoutes: handler("updateRoutes"), addARPNeighbors: handler("addARPNeighbors") } as unknown as AgentApi;
  return { agent, calls };
}

test("interfaceRequest: found by MAC (no device), the pod's name, MTU and addresses", () => {
  assert.deepEqual(interfaceRequest(SCAN.interfaces[0]!), {
    interface: {
      device: "",
      name: "eth0",
      hwAddr: "0a:58:0a:d5:07:02",
      mtu: 1400n,
      addresses: [{ family: 4, address: "10.213.7.2", prefixLength: 24 }, { family: 6, address: "fd00::2", prefixLength: 64 }],
    },
  });
});

test("routesRequest: netlink scope numbers; neighborsRequest: permanent IPv4 entries, IPv6 ones set aside", () => {
  assert.deepEqual(routesRequest(SCAN.routes), {
    routes: {
      routes: [
        { dest: "0.0.0.0/0", gateway: "10.213.7.1", device: "eth0", source: "", scope: 0 },
        { dest: "10.213.7.0/24", gateway: "", device: "eth0", source: "10.213.7.2", scope: 253 },
        { dest: "10.9.9.9/32", gateway: "", device: "eth0", source: "", scope: 254 },
      ],
    },
  });
  const { request, skipped } = neighborsRequest(SCAN.neighbors);
  assert.deepEqual(request, { neighbors: [{ toIpAddress: "10.213.7.9", device: "eth0", llAddr: "02:00:00:00:00:05", state: 0x80 }] });
  assert.deepEqual(skipped, [SCAN.neighbors[1]]);
});

test("ipValue reads IPv4 and IPv6 (compressed, embedded IPv4) as numbers", () => {
  assert.deepEqual(ipValue("10.213.7.2"), { family: 4, value: 0x0ad50702n });
  assert.deepEqual(ipValue("::"), { family: 6, value: 0n });
  assert.deepEqual(ipValue("::1"), { family: 6, value: 1n });
  assert.deepEqual(ipValue("fd00::"), { family: 6, value: 0xfd00n << 112n });
  assert.deepEqual(ipValue("fd00:0:0:0:0:0:0:2"), ipValue("fd00::2"));
  assert.deepEqual(ipValue("::ffff:10.0.0.1"), { family: 6, value: (0xffffn << 32n) | 0x0a000001n });
  assert.equal(ipValue("default"), undefined);
  assert.equal(ipValue("10.0.0.256"), undefined);
});

test("guestRoutes leaves out the prefix routes the guest kernel makes for the addresses it gets, and nothing else", () => {
  const eth0 = { name: "eth0", mac: "0a:58:0a:d5:07:02", mtu: 1400, addresses: [{ family: 4 as const, address: "10.213.7.2", prefixLength: 24 }, { family: 6 as const, address: "fd00::2", prefixLength: 64 }, { family: 4 as const, address: "10.9.0.1", prefixLength: 32 }] };
  const r = (over: Partial<(typeof SCAN.routes)[number]>): (typeof SCAN.routes)[number] => ({ family: 4, dest: "10.213.7.0/24", gateway: "", device: "eth0", scope: "link", source: "10.213.7.2", ...over });
  const kept = [
    r({ dest: "0.0.0.0/0", gateway: "10.213.7.1", scope: "global", source: "" }),
    r({ dest: "10.213.7.0/25" }), // another prefix length: added by someone, not the kernel
    r({ dest: "10.213.8.0/24" }), // another network
    r({ device: "net1" }), // another device
    r({ source: "10.213.7.3" }), // another source
    r({ dest: "10.9.0.1/32", source: "" }), // the kernel makes no route for a /32
    r({ scope: "global" }),
    r({ family: 6, dest: "::/0", gateway: "fd00::1", scope: "global", source: "" }),
  ];
  const dropped = [r({}), r({ source: "" }), r({ family: 6, dest: "fd00::/64", scope: "global", source: "" })];
  assert.deepEqual(guestRoutes({ interfaces: [eth0], routes: [...dropped, ...kept] }), kept);
});

test("configureGuestNetwork: every interface, then the routes, then the neighbours; nothing for what is empty", async () => {
  const a = fakeAgent();
  await configureGuestNetwork("sb1", a.agent, SCAN, quiet);
  assert.deepEqual(a.calls.map(([m]) => m), ["updateInterface", "updateInterface", "updateRoutes", "addARPNeighbors"]);
  const sent = (a.calls[2]![1] as { routes: { routes: Array<{ dest: string }> } }).routes.routes.map((r) => r.dest);
  assert.deepEqual(sent, ["0.0.0.0/0", "10.9.9.9/32"], "the kernel-made 10.213.7.0/24 is not sent");
  const b = fakeAgent();
  await configureGuestNetwork("sb1", b.agent, { interfaces: [SCAN.interfaces[1]!], routes: [], neighbors: [SCAN.neighbors[1]!] }, quiet);
  assert.deepEqual(b.calls.map(([m]) => m), ["updateInterface"]);
});

test("configureGuestNetwork: an agent failure names the sandbox and the step and keeps the agent's code", async () => {
  const a = fakeAgent({ method: "updateInterface", err: new TtrpcError(Code.NOT_FOUND, "UpdateInterface eth0: no guest interface with MAC 0a:58:0a:d5:07:02") });
  await assert.rejects(configureGuestNetwork("sb1", a.agent, SCAN, quiet), (e: unknown) => {
    assert.ok(e instanceof AgentError);
    assert.equal(e.code, Code.NOT_FOUND);
    assert.equal(e.id, "sb1");
    assert.match(e.message, /network of sandbox sb1 in the guest failed at UpdateInterface eth0 \(0a:58:0a:d5:07:02\): UpdateInterface eth0: no guest interface/);
    return true;
  });
  // All were sent at once; the first failure in sending order is the one reported.
  assert.deepEqual(a.calls.map(([m]) => m), ["updateInterface", "updateInterface", "updateRoutes", "addARPNeighbors"]);
  const b = fakeAgent({ method: "updateRoutes", err: new TtrpcError(Code.INTERNAL, "UpdateRoutes: `ip route replace …` failed: Network is unreachable") });
  await assert.rejects(configureGuestNetwork("sb1", b.agent, SCAN, quiet), /failed at UpdateRoutes: .*Network is unreachable/);
});

test("configureGuestNetwork sends every call without waiting for the one before (the agent orders them)", async () => {
  const calls: string[] = [];
  let releaseInterfaces: () => void = () => undefined;
  const interfacesHeld = new Promise<void>((r) => (releaseInterfaces = r));
  const agent = new Proxy({} as AgentApi, {
    get: (_t, method: string) => async () => {
      calls.push(method);
      if (method === "updateInterface") await interfacesHeld;
      return {};
    },
  });
  const done = configureGuestNetwork("sb1", agent, SCAN, quiet);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(calls, ["updateInterface", "updateInterface", "updateRoutes", "addARPNeighbors"], "all sent while the interfaces are not answered yet");
  releaseInterfaces();
  await done;
});
