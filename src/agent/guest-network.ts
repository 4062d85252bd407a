// Guest network set-up for UpdateInterface, UpdateRoutes and AddARPNeighbors,
// with what the guest has: busybox's `ip` (link set, addr add/flush,
// route replace; no `ip neigh add` and no -batch) and `arp -s` for static
// neighbours. Every request becomes one shell script, run by the helper shell
// (helper-shell.ts: no fork of the agent); the scripts are built by pure functions so
// they can be tested without a guest. Every value is validated before it gets
// near a shell, and also quoted.
import { readdirSync, readFileSync, existsSync } from "node:fs";
import { isIP } from "node:net";
import { Code } from "../protocols/ttrpc/status.js";
import { AgentError } from "../runtime/errors.js";
import { runCommand, runScript, shQuote } from "./helper-shell.js";

export const SYS_CLASS_NET = "/sys/class/net";

/** Netlink route scopes (rtnetlink.h) as the Route message carries them, and busybox's names for them. */
export const ROUTE_SCOPE_NAMES: ReadonlyMap<number, string> = new Map([
  [0, "global"],
  [200, "site"],
  [253, "link"],
  [254, "host"],
  [255, "nowhere"],
]);

/** NUD_PERMANENT: the only neighbour state `arp -s` creates. */
export const NUD_PERMANENT = 0x80;

export interface GuestLink {
  name: string;
  mac: string;
  /** IFF_UP is set. */
  up: boolean;
}

export interface InterfaceUpdate {
  /** Guest device to configure; "" to find it by hwAddr. */
  device: string;
  /** Name it must have (the pod's, e.g. eth0). */
  name: string;
  hwAddr: string;
  /** 0: leave the MTU alone. */
  mtu: number;
  addresses: Array<{ family: number; address: string; prefixLength: number }>;
}

export interface RouteUpdate {
  dest: string;
  gateway: string;
  device: string;
  source: string;
  scope: number;
}

export interface NeighborUpdate {
  toIpAddress: string;
  device: string;
  llAddr: string;
  state: number;
}

const IFNAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function invalid(rpc: string, message: string, hint?: string): AgentError {
  return new AgentError("", `${rpc}: ${message}`, { code: Code.INVALID_ARGUMENT, hint });
}

/** The links of the guest with their MACs, from /sys/class/net (no spawn). */
export function listLinks(sysNet = SYS_CLASS_NET): GuestLink[] {
  let names: string[];
  try {
    names = readdirSync(sysNet);
  } catch {
    return [];
  }
  const out: GuestLink[] = [];
  for (const name of names) {
    try {
      const mac = readFileSync(`${sysNet}/${name}/address`, "utf8").trim().toLowerCase();
      let up = false;
      try {
        up = (Number.parseInt(readFileSync(`${sysNet}/${name}/flags`, "utf8").trim(), 16) & 1) === 1;
      } catch {
        /* no flags file: taken as down */
      }
      out.push({ name, mac, up });
    } catch {
      /* vanished meanwhile */
    }
  }
  return out;
}

/** Waits (briefly: virtio-net probes while the agent starts) for a link with this MAC. */
export async function waitForLinks(mac: string, timeoutMs: number, sysNet = SYS_CLASS_NET): Promise<GuestLink[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const links = listLinks(sysNet);
    if (links.some((l) => l.mac === mac) || Date.now() >= deadline) return links;
    await new Promise((r) => setTimeout(r, 50));
  }
}

function checkAddress(rpc: string, what: string, ip: string): 4 | 6 {
  const fam = isIP(ip);
  if (fam !== 4 && fam !== 6) throw invalid(rpc, `${what} ${JSON.stringify(ip)} is not an IP address`);
  return fam;
}

/** Splits "a.b.c.d/n" (or a bare address, taken as a host route) and checks both parts. */
function checkCidr(rpc: string, what: string, cidr: string): { family: 4 | 6; text: string } {
  const [ip = "", len, extra] = cidr.split("/");
  if (extra !== undefined) throw invalid(rpc, `${what} ${JSON.stringify(cidr)} is not a CIDR`);
  const family = checkAddress(rpc, what, ip);
  if (len === undefined) return { family, text: ip };
  const n = Number(len);
  if (!/^\d{1,3}$/.test(len) || n > (family === 4 ? 32 : 128)) throw invalid(rpc, `${what} ${JSON.stringify(cidr)} has a bad prefix length`);
  return { family, text: `${ip}/${n}` };
}

function checkIfName(rpc: string, what: string, name: string): string {
  if (!IFNAME_RE.test(name)) throw invalid(rpc, `${what} ${JSON.stringify(name)} is not a valid interface name`, "1-15 characters of [A-Za-z0-9_.-]");
  return name;
}

/**
 * The commands that give the guest NIC with `req.hwAddr` (or `req.device`)
 * the pod interface's name, MTU and addresses, and bring it up. Addresses
 * are replaced, not merged. Each command is a fork under TCG, so a fresh
 * NIC (down, never configured: `dirty` false) gets only its `ip addr add`s
 * and one `ip link set … name … mtu … up` (busybox applies name, then MTU,
 * then flags). A NIC that is up or was configured before is taken down and
 * flushed first (bringing it up again renews its IPv6 link-local address).
 * A link that already holds the wanted name is renamed out of the way.
 */
export function interfaceCommands(req: InterfaceUpdate, links: readonly GuestLink[], dirty: (name: string) => boolean = () => true): { device: string; commands: string[][] } {
  const rpc = `UpdateInterface ${req.name || req.device || req.hwAddr}`;
  const want = checkIfName(rpc, "interface name", req.name);
  const mac = req.hwAddr.toLowerCase();
  if (req.hwAddr !== "" && !MAC_RE.test(mac)) throw invalid(rpc, `hardware address ${JSON.stringify(req.hwAddr)} is not a MAC address`);
  if (req.mtu !== 0 && (!Number.isInteger(req.mtu) || req.mtu < 68 || req.mtu > 65535)) throw invalid(rpc, `MTU ${req.mtu} is outside 68..65535`);
  const addrs = req.addresses.map((a) => {
    const fam = checkAddress(rpc, "address", a.address);
    if (a.family !== 0 && a.family !== fam) throw invalid(rpc, `address ${a.address} is not of family ${a.family}`);
    if (!Number.isInteger(a.prefixLength) || a.prefixLength < 0 || a.prefixLength > (fam === 4 ? 32 : 128)) throw invalid(rpc, `address ${a.address} has prefix length ${a.prefixLength}`);
    return `${a.address}/${a.prefixLength}`;
  });

  let link: GuestLink | undefined;
  if (req.device !== "") link = links.find((l) => l.name === req.device);
  else if (mac !== "") link = links.find((l) => l.mac === mac);
  else throw invalid(rpc, "neither a device nor a hardware address names the guest interface");
  if (link === undefined) {
    const have = links.filter((l) => l.name !== "lo").map((l) => `${l.name} (${l.mac})`).join(", ") || "none";
    throw new AgentError("", `${rpc}: no guest interface ${req.device !== "" ? `named ${req.device}` : `with MAC ${mac}`}; the guest has: ${have}`, {
      code: Code.NOT_FOUND,
      hint: "the VM must be started with a virtio-net NIC carrying the pod interface's MAC (VmSpec.network)",
    });
  }

  const cur = link.name;
  const cmds: string[][] = [];
  if (link.up) cmds.push(["ip", "link", "set", "dev", cur, "down"]);
  if (link.up || dirty(cur)) cmds.push(["ip", "addr", "flush", "dev", cur]);
  for (const a of addrs) cmds.push(["ip", "addr", "add", a, "dev", cur]);
  const final = ["ip", "link", "set", "dev", cur];
  if (cur !== want) {
    const clash = links.find((l) => l.name === want);
    if (clash !== undefined) {
      let spare = 0;
      while (links.some((l) => l.name === `hako${spare}`)) spare++;
      cmds.push(["ip", "link", "set", "dev", want, "down"], ["ip", "link", "set", "dev", want, "name", `hako${spare}`]);
    }
    final.push("name", want);
  }
  if (req.mtu !== 0) final.push("mtu", String(req.mtu));
  // Named by device (a VM cloned from a template): give it the pod's MAC.
  if (req.device !== "" && mac !== "" && link.mac !== mac) final.push("address", mac);
  final.push("up");
  cmds.push(final);
  return { device: want, commands: cmds };
}

/**
 * `ip route replace` per route (adds, or replaces the kernel's own prefix
 * route for an address): directly connected routes first, so that every
 * gateway is reachable when its route is added. Routes not listed are left
 * alone. Every device must exist (configure interfaces first).
 */
export function routeCommands(routes: readonly RouteUpdate[], deviceExists: (name: string) => boolean): string[][] {
  const checked = routes.map((r) => {
    const rpc = `UpdateRoutes (route to ${r.dest || "?"})`;
    const dest = checkCidr(rpc, "destination", r.dest);
    if (r.gateway !== "" && checkAddress(rpc, "gateway", r.gateway) !== dest.family) throw invalid(rpc, `gateway ${r.gateway} is not of the destination's family`);
    if (r.source !== "" && checkAddress(rpc, "source", r.source) !== dest.family) throw invalid(rpc, `source ${r.source} is not of the destination's family`);
    const scope = ROUTE_SCOPE_NAMES.get(r.scope);
    if (scope === undefined) throw invalid(rpc, `scope ${r.scope} is not one of ${[...ROUTE_SCOPE_NAMES].map(([n, s]) => `${n} (${s})`).join(", ")}`);
    const dev = checkIfName(rpc, "device", r.device);
    if (!deviceExists(dev)) {
      throw new AgentError("", `${rpc}: device ${dev} does not exist in the guest`, { code: Code.FAILED_PRECONDITION, hint: "call UpdateInterface for it first" });
    }
    const cmd = ["ip", ...(dest.family === 6 ? ["-6"] : []), "route", "replace", dest.text];
    if (r.gateway !== "") cmd.push("via", r.gateway);
    cmd.push("dev", dev, "scope", scope);
    if (r.source !== "") cmd.push("src", r.source);
    return { direct: r.gateway === "", cmd };
  });
  return [...checked.filter((c) => c.direct), ...checked.filter((c) => !c.direct)].map((c) => c.cmd);
}

/** `arp -i DEV -s IP MAC` per neighbour: a permanent IPv4 entry (busybox has no `ip neigh add`, so no IPv6). */
export function neighborCommands(neighbors: readonly NeighborUpdate[], deviceExists: (name: string) => boolean): string[][] {
  return neighbors.map((n) => {
    const rpc = `AddARPNeighbors (${n.toIpAddress || "?"} on ${n.device || "?"})`;
    const fam = checkAddress(rpc, "address", n.toIpAddress);
    if (fam === 6) {
      throw new AgentError("", `${rpc}: static IPv6 neighbours are not supported by this guest (busybox has no \`ip neigh add\`)`, {
        code: Code.UNIMPLEMENTED,
        hint: "leave IPv6 neighbours out; the guest resolves them with NDP",
      });
    }
    const mac = n.llAddr.toLowerCase();
    if (!MAC_RE.test(mac)) throw invalid(rpc, `link-layer address ${JSON.stringify(n.llAddr)} is not a MAC address`);
    if (n.state !== 0 && n.state !== NUD_PERMANENT) throw invalid(rpc, `neighbour state 0x${n.state.toString(16)} is not supported`, "only permanent (0x80) entries can be added");
    const dev = checkIfName(rpc, "device", n.device);
    if (!deviceExists(dev)) throw new AgentError("", `${rpc}: device ${dev} does not exist in the guest`, { code: Code.FAILED_PRECONDITION, hint: "call UpdateInterface for it first" });
    return ["arp", "-i", dev, "-s", n.toIpAddress, mac];
  });
}

/** Marks the start of each command on stderr, so a failure's output can be told from earlier warnings. */
const RUN_MARK = "hako-net-run:";

/**
 * One sh script running the commands in order and stopping at the first
 * failure. No extra fork per command: before each, a builtin printf marks
 * it on stderr.
 */
export function buildScript(commands: readonly string[][]): string {
  const lines = ["r() { printf '%s %s\\n' " + shQuote(RUN_MARK) + ' "$*" >&2; "$@" || exit $?; }'];
  for (const c of commands) lines.push(`r ${c.map(shQuote).join(" ")}`);
  return `${lines.join("\n")}\n`;
}

/** From a failed script's stderr: the command that failed and what it printed. */
export function failedCommand(stderr: string): { command: string; output: string } {
  const lines = stderr.split("\n");
  let at = -1;
  for (let i = lines.length - 1; i >= 0; i--) {
    if (lines[i]!.startsWith(`${RUN_MARK} `)) {
      at = i;
      break;
    }
  }
  if (at < 0) return { command: "", output: stderr.trim() };
  return { command: lines[at]!.slice(RUN_MARK.length + 1), output: lines.slice(at + 1).join("\n").trim() };
}

/**
 * Runs the commands: one alone directly, several as one script. A failure
 * names the RPC, the failed command and its output.
 */
export async function runCommands(rpc: string, commands: readonly string[][], hint: string): Promise<void> {
  if (commands.length === 0) return;
  try {
    if (commands.length === 1) await runCommand(commands[0]![0]!, commands[0]!.slice(1));
    else await runScript(buildScript(commands));
  } catch (err) {
    const e = err as { stderr?: unknown; message?: unknown };
    const stderr = typeof e.stderr === "string" ? e.stderr : "";
    const { command, output } = commands.length === 1 ? { command: commands[0]!.join(" "), output: stderr.trim() } : failedCommand(stderr);
    const what = command !== "" ? `\`${command}\` failed: ${output || "no output"}` : `the set-up script failed: ${output || String(e.message ?? err)}`;
    throw new AgentError("", `${rpc}: ${what}`, { code: Code.INTERNAL, hint, cause: err });
  }
}

/**
 * A runner that starts each piece of work only when the one passed before it
 * has settled, in the order they were passed. One that fails does not stop
 * the next; each caller gets its own result.
 */
export function inArrivalOrder(): <T>(work: () => Promise<T>) => Promise<T> {
  let chain: Promise<unknown> = Promise.resolve();
  return <T>(work: () => Promise<T>): Promise<T> => {
    const step = chain.then(work, work);
    chain = step.catch(() => undefined);
    return step;
  };
}

export const deviceExists = (name: string): boolean => existsSync(`${SYS_CLASS_NET}/${name}`);

/** Links this agent has given addresses (a down link not in here has none: the guest kernel assigns no IPv4 by itself). */
const configured = new Set<string>();

/** UpdateInterface: finds the NIC (by MAC, waiting up to 3 s for it to appear), names, sizes, addresses and raises it. */
export async function updateInterface(req: InterfaceUpdate): Promise<InterfaceUpdate> {
  const mac = req.hwAddr.toLowerCase();
  const links = req.device === "" && MAC_RE.test(mac) ? await waitForLinks(mac, 3000) : listLinks();
  const { device, commands } = interfaceCommands(req, links, (name) => configured.has(name));
  const before = links.find((l) => (req.device !== "" ? l.name === req.device : l.mac === mac))?.name;
  if (before !== undefined) configured.delete(before);
  configured.add(device); // also on failure: a half-configured link is flushed next time
  await runCommands(`UpdateInterface ${req.name}`, commands, `check the interface with \`ip addr show ${device}\` in the guest (hako exec <id> ip addr)`);
  return { ...req, device, hwAddr: mac };
}

/**
 * Puts a link back the way a fresh NIC is (down, no addresses or routes, MAC
 * `mac`) and forgets that it was configured, so that the next UpdateInterface
 * treats it as never set up (no extra down/flush). For the warm-up only.
 */
export async function resetInterface(name: string, mac: string): Promise<void> {
  checkIfName("reset", "interface name", name);
  if (!MAC_RE.test(mac)) throw invalid("reset", `hardware address ${JSON.stringify(mac)} is not a MAC address`);
  await runCommands(
    `reset ${name}`,
    [
      ["ip", "link", "set", "dev", name, "down"],
      ["ip", "addr", "flush", "dev", name],
      ["ip", "route", "flush", "dev", name],
      ["ip", "link", "set", "dev", name, "address", mac],
    ],
    "",
  );
  configured.delete(name);
}

export async function updateRoutes(routes: readonly RouteUpdate[]): Promise<void> {
  await runCommands("UpdateRoutes", routeCommands(routes, deviceExists), "the routes must fit the interfaces' addresses; check them with `ip route` in the guest");
}

export async function addNeighbors(neighbors: readonly NeighborUpdate[]): Promise<void> {
  await runCommands("AddARPNeighbors", neighborCommands(neighbors, deviceExists), "check the entries with `arp -n` in the guest");
}
