// Reads what the guest needs from a pod netns after CNI ran: interfaces with
// their MAC/MTU/addresses, main-table routes and static neighbours, from the
// JSON output of iproute2 (`ip -j`). The parsers are pure and exported so
// they can be tested on fixtures.
import { ResourceError } from "../../runtime/errors.js";
import { NetnsCommandError, nsenterRunner, type NetnsRunner } from "./netns-exec.js";
import type { GuestAddress, GuestInterface, GuestNeighbor, GuestRoute, GuestRouteScope, IpFamily, NetnsScan } from "./network-endpoint.js";

/** Taps this runtime creates in pod netns (tap<N>_hako); never reported as guest interfaces. */
export const HAKO_TAP_PATTERN = /^tap\d+_hako$/;

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Parses `ip -j …` output into an array of objects. Empty output is an empty list. */
export function parseJsonArray(text: string, what: string): JsonObject[] {
  const trimmed = text.trim();
  if (trimmed === "") return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(trimmed);
  } catch (err) {
    throw new Error(`${what}: output is not JSON: ${trimmed.slice(0, 120)}`, { cause: err });
  }
  if (!Array.isArray(parsed)) throw new Error(`${what}: expected a JSON array`);
  return parsed.filter(isObject);
}

function str(o: JsonObject, key: string): string | undefined {
  const v = o[key];
  return typeof v === "string" ? v : undefined;
}

function num(o: JsonObject, key: string): number | undefined {
  const v = o[key];
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

function strList(o: JsonObject, key: string): string[] {
  const v = o[key];
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : [];
}

const familyOf = (ip: string): IpFamily => (ip.includes(":") ? 6 : 4);

export interface ScanFilter {
  /** Interface names to leave out besides lo and hako taps. */
  skip?: readonly string[];
}

function skipped(name: string, linkType: string | undefined, filter: ScanFilter): boolean {
  return name === "lo" || linkType === "loopback" || HAKO_TAP_PATTERN.test(name) || (filter.skip ?? []).includes(name);
}

/**
 * `ip -j addr show` → interfaces. Only Ethernet-like links (link_type "ether")
 * are kept: the tunnel devices every netns gets when ipip/sit modules are
 * loaded (tunl0, sit0, …) cannot be carried into the guest. IPv6 link-local
 * addresses are dropped: the guest derives its own from the same MAC.
 */
export function parseAddrJson(text: string, filter: ScanFilter = {}): GuestInterface[] {
  const out: GuestInterface[] = [];
  for (const link of parseJsonArray(text, "ip -j addr")) {
    const name = str(link, "ifname");
    const linkType = str(link, "link_type");
    if (name === undefined || skipped(name, linkType, filter) || linkType !== "ether") continue;
    const addresses: GuestAddress[] = [];
    const info = link["addr_info"];
    for (const a of Array.isArray(info) ? info.filter(isObject) : []) {
      const fam = str(a, "family");
      const local = str(a, "local");
      const prefixLength = num(a, "prefixlen");
      if ((fam !== "inet" && fam !== "inet6") || local === undefined || prefixLength === undefined) continue;
      if (fam === "inet6" && str(a, "scope") === "link") continue;
      addresses.push({ family: fam === "inet" ? 4 : 6, address: local, prefixLength });
    }
    out.push({ name, mac: (str(link, "address") ?? "").toLowerCase(), mtu: num(link, "mtu") ?? 1500, addresses });
  }
  return out;
}

const SCOPES: readonly GuestRouteScope[] = ["global", "site", "link", "host", "nowhere"];

function parseScope(raw: string | undefined): GuestRouteScope {
  if (raw === undefined || raw === "universe" || raw === "0") return "global";
  const s = SCOPES.find((x) => x === raw);
  if (s === undefined) throw new Error(`unknown route scope ${JSON.stringify(raw)}`);
  return s;
}

function normaliseDest(dst: string, family: IpFamily): string {
  if (dst === "default") return family === 4 ? "0.0.0.0/0" : "::/0";
  if (dst.includes("/")) return dst;
  return `${dst}/${family === 4 ? 32 : 128}`;
}

/**
 * `ip -j -4|-6 route show table main` → routes on `devices` only. Non-unicast
 * routes (blackhole, unreachable, …), multipath routes and the IPv6
 * link-local/multicast routes the guest kernel adds by itself are dropped.
 */
export function parseRouteJson(text: string, family: IpFamily, devices: ReadonlySet<string>): GuestRoute[] {
  const out: GuestRoute[] = [];
  for (const r of parseJsonArray(text, `ip -j -${family} route`)) {
    const type = str(r, "type");
    if (type !== undefined && type !== "unicast") continue;
    const dev = str(r, "dev");
    const dst = str(r, "dst");
    if (dev === undefined || dst === undefined || !devices.has(dev)) continue;
    const dest = normaliseDest(dst, family);
    if (family === 6 && (dest.startsWith("fe80:") || dest.startsWith("ff00:"))) continue;
    out.push({ family, dest, gateway: str(r, "gateway") ?? "", device: dev, scope: parseScope(str(r, "scope")), source: str(r, "prefsrc") ?? "" });
  }
  return out;
}

/** `ip -j neigh show` → permanent (static) entries with a link-layer address on `devices`. */
export function parseNeighJson(text: string, devices: ReadonlySet<string>): GuestNeighbor[] {
  const out: GuestNeighbor[] = [];
  for (const n of parseJsonArray(text, "ip -j neigh")) {
    const ip = str(n, "dst");
    const mac = str(n, "lladdr");
    const dev = str(n, "dev");
    if (ip === undefined || mac === undefined || dev === undefined || !devices.has(dev)) continue;
    if (!strList(n, "state").includes("PERMANENT")) continue;
    out.push({ family: familyOf(ip), ip, mac: mac.toLowerCase(), device: dev });
  }
  return out;
}

export interface ScanOptions extends ScanFilter {
  /** Injected for tests; defaults to nsenter into netnsPath. */
  runner?: NetnsRunner;
}

/** Scans a pod netns (by path) for the interfaces, routes and neighbours the guest must replicate. */
export async function scanNetns(netnsPath: string, opts: ScanOptions = {}): Promise<NetnsScan> {
  const run = opts.runner ?? nsenterRunner(netnsPath);
  const fail = (err: unknown): never => {
    const detail = err instanceof Error ? err.message : String(err);
    const missing = err instanceof NetnsCommandError && err.netnsMissing;
    throw new ResourceError(netnsPath, `scanning network namespace ${netnsPath} failed: ${detail}`, {
      hint: missing ? "the netns is gone; check that the CNI plugin created it and the pod sandbox still exists" : "check `nsenter --net=<netns> ip -j addr` by hand; iproute2 with JSON output (-j) is required",
      cause: err,
    });
  };
  try {
    const [addr, route4, route6, neigh] = await Promise.all([
      run("ip", ["-j", "addr", "show"]),
      run("ip", ["-j", "-4", "route", "show", "table", "main"]),
      // A netns with IPv6 disabled has no IPv6 routes to copy.
      run("ip", ["-j", "-6", "route", "show", "table", "main"]).catch((err: unknown) => {
        if (err instanceof NetnsCommandError && /Address family not supported|not supported/i.test(err.stderr)) return "[]";
        throw err;
      }),
      run("ip", ["-j", "neigh", "show"]),
    ]);
    const interfaces = parseAddrJson(addr, opts);
    const devices = new Set(interfaces.map((i) => i.name));
    return {
      interfaces,
      routes: [...parseRouteJson(route4, 4, devices), ...parseRouteJson(route6, 6, devices)],
      neighbors: parseNeighJson(neigh, devices),
    };
  } catch (err) {
    return fail(err);
  }
}
