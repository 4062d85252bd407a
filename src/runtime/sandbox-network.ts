// What the guest must be told about the pod network once its agent answers:
// the scanned interfaces, routes and static neighbours as agent requests.
// The mappers are pure; configureGuestNetwork() sends them in order
// (interfaces, then routes, then neighbours) before any container exists.
import { isIPv4, isIPv6 } from "node:net";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { AddARPNeighborsRequestSchema, UpdateInterfaceRequestSchema, UpdateRoutesRequestSchema } from "../protocols/gen/hako/agent/v1/agent_pb.js";
import { Code, TtrpcError } from "../protocols/ttrpc/status.js";
import type { GuestInterface, GuestNeighbor, GuestRoute, GuestRouteScope, NetnsScan } from "../resource/network/network-endpoint.js";
import type { AgentApi } from "./agent-client.js";
import { AgentError, HakoError } from "./errors.js";
import type { Logger } from "./logger.js";
import { allSettledThenThrow } from "./settled.js";

/** Netlink route scopes (rtnetlink.h), as the agent's Route.scope carries them. */
export const ROUTE_SCOPE: Readonly<Record<GuestRouteScope, number>> = { global: 0, site: 200, link: 253, host: 254, nowhere: 255 };

/** NUD_PERMANENT: static neighbours copied from the netns are permanent entries. */
export const NUD_PERMANENT = 0x80;

/** An IP address as a number (IPv4: 32 bits, IPv6: 128), or undefined if it is not one. */
export function ipValue(ip: string): { family: 4 | 6; value: bigint } | undefined {
  if (isIPv4(ip)) return { family: 4, value: ip.split(".").reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n) };
  if (!isIPv6(ip)) return undefined;
  let text = ip;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const n = ipValue(v4[1]!)!.value;
    text = `${text.slice(0, -v4[1]!.length)}${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const hs = head === "" ? [] : head.split(":");
  const ts = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups = tail === undefined ? hs : [...hs, ...Array<string>(8 - hs.length - ts.length).fill("0"), ...ts];
  return { family: 6, value: groups.reduce((acc, g) => (acc << 16n) | BigInt(Number.parseInt(g, 16)), 0n) };
}

function network(value: bigint, bits: number, prefix: number): bigint {
  const host = (1n << BigInt(bits - prefix)) - 1n;
  return value & ~host;
}

/**
 * The routes the guest must be given: the scan's, less the prefix routes
 * the guest kernel creates by itself for an address it is given (same
 * device, network and prefix, no gateway; IPv4 ones link-scoped with the
 * address as source or none). Sending those too would only cost a spawn
 * each (IPv4) or duplicate them (IPv6, where the metric differs).
 */
export function guestRoutes(scan: Pick<NetnsScan, "interfaces" | "routes">): GuestRoute[] {
  const kernelMade = (r: GuestRoute): boolean => {
    if (r.gateway !== "") return false;
    const [ip = "", len] = r.dest.split("/");
    const dest = ipValue(ip);
    const prefix = Number(len);
    if (dest === undefined || len === undefined || !Number.isInteger(prefix)) return false;
    const bits = dest.family === 4 ? 32 : 128;
    if (prefix >= bits || (dest.family === 4 && r.scope !== "link")) return false;
    const iface = scan.interfaces.find((i) => i.name === r.device);
    return (iface?.addresses ?? []).some((a) => {
      const addr = ipValue(a.address);
      return (
        addr !== undefined &&
        addr.family === dest.family &&
        a.prefixLength === prefix &&
        network(addr.value, bits, prefix) === dest.value &&
        (r.source === "" || r.source === a.address)
      );
    });
  };
  return scan.routes.filter((r) => !kernelMade(r));
}

export function interfaceRequest(iface: GuestInterface, guestDevice = ""): MessageInitShape<typeof UpdateInterfaceRequestSchema> {
  return {
    interface: {
      // No guest device name: the agent finds the NIC by the MAC QEMU gave it. A VM
      // cloned from a template names it (the NIC has the template's MAC; it gets hwAddr).
      device: guestDevice,
      name: iface.name,
      hwAddr: iface.mac,
      mtu: BigInt(iface.mtu),
      addresses: iface.addresses.map((a) => ({ family: a.family, address: a.address, prefixLength: a.prefixLength })),
    },
  };
}

export function routesRequest(routes: readonly GuestRoute[]): MessageInitShape<typeof UpdateRoutesRequestSchema> {
  return { routes: { routes: routes.map((r) => ({ dest: r.dest, gateway: r.gateway, device: r.device, source: r.source, scope: ROUTE_SCOPE[r.scope] })) } };
}

/** IPv4 neighbours only (the guest cannot add IPv6 ones; it resolves them with NDP); `skipped` lists the rest. */
export function neighborsRequest(neighbors: readonly GuestNeighbor[]): { request: MessageInitShape<typeof AddARPNeighborsRequestSchema>; skipped: GuestNeighbor[] } {
  const v4 = neighbors.filter((n) => n.family === 4);
  return {
    request: { neighbors: v4.map((n) => ({ toIpAddress: n.ip, device: n.device, llAddr: n.mac, state: NUD_PERMANENT })) },
    skipped: neighbors.filter((n) => n.family !== 4),
  };
}

function wrap(id: string, step: string, err: unknown): AgentError {
  const code = err instanceof TtrpcError || err instanceof HakoError ? err.code : Code.UNAVAILABLE;
  const msg = err instanceof Error ? err.message : String(err);
  return new AgentError(id, `configuring the network of sandbox ${id} in the guest failed at ${step}: ${msg}`, {
    code,
    hint: "see the agent's message; the VM's NICs come from the pod netns scan (hako state / the console log help)",
    cause: err,
  });
}

/**
 * Sends UpdateInterface per interface, UpdateRoutes, and AddARPNeighbors
 * when there are static neighbours, in that order, all at once: the agent
 * runs its network RPCs one at a time in arrival order (agent-service.ts),
 * so no call waits for the previous answer's round trip. The first failure
 * in that order is the one reported.
 */
export async function configureGuestNetwork(id: string, agent: AgentApi, scan: NetnsScan, log: Logger, guestDevices?: readonly string[]): Promise<void> {
  const t0 = Date.now();
  const steps: Array<Promise<void>> = [];
  const send = (what: string, call: () => Promise<unknown>): void => {
    steps.push(
      call().then(
        () => log.debug({ sandbox: id, ms: Date.now() - t0 }, `guest network: ${what} done`),
        (err: unknown) => {
          throw wrap(id, what, err);
        },
      ),
    );
  };
  for (const [i, iface] of scan.interfaces.entries()) send(`UpdateInterface ${iface.name} (${iface.mac})`, () => agent.updateInterface(interfaceRequest(iface, guestDevices?.[i])));
  const routes = guestRoutes(scan);
  if (routes.length > 0) send("UpdateRoutes", () => agent.updateRoutes(routesRequest(routes)));
  const { request, skipped } = neighborsRequest(scan.neighbors);
  if (skipped.length > 0) log.warn({ sandbox: id, neighbors: skipped }, "static IPv6 neighbours are not copied into the guest (it resolves them with NDP)");
  if (request.neighbors !== undefined && request.neighbors.length > 0) send("AddARPNeighbors", () => agent.addARPNeighbors(request));
  await allSettledThenThrow(steps);
}
