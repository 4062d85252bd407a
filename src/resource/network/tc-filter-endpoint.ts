// The tcfilter network model (Kata's default): for one veth in the pod netns,
// a tap `tap<N>_hako` is created next to it and two tc ingress filters
// redirect every frame from one to the other. The VMM later opens the tap
// (from inside the netns), so the guest NIC sees exactly the veth's traffic.
//
// Only u32 is used as the classifier: `u32 match u32 0 0` matches every frame,
// and unlike matchall/flower it is built into every kernel we target.
import { ResourceError } from "../../runtime/errors.js";
import { NetnsCommandError, nsenterRunner, sleep, type NetnsRunner } from "./netns-exec.js";
import { HAKO_TAP_PATTERN, parseJsonArray } from "./netns-scan.js";
import type { NetworkEndpoint } from "./network-endpoint.js";

/** Filter priority used for our redirects, so they can be removed alone from a shared ingress qdisc. */
export const HAKO_FILTER_PREF = 42000;

export const tapNameFor = (index: number): string => `tap${index}_hako`;

export interface TcFilterEndpointOptions {
  /** Path of the pod netns (/var/run/netns/<name>, /proc/<pid>/ns/net). */
  netnsPath: string;
  /** The interface in that netns to carry into the guest (the CNI veth, e.g. eth0). */
  veth: string;
  /** N in tap<N>_hako. Default: the lowest N not in use at create() time; pass it when creating several endpoints in one netns. */
  tapIndex?: number;
  /** Injected for tests; defaults to nsenter into netnsPath. */
  runner?: NetnsRunner;
  /** Retries of tc commands that fail with EBUSY (default 5 attempts, 10 ms apart). */
  busyRetries?: { attempts: number; backoffMs: number };
}

/**
 * What an endpoint put into its netns, as persisted in the sandbox's
 * state.json, so that a later process (`hako delete -f`, the shim's delete)
 * can remove it after the owner died: see TcFilterEndpoint.fromRecord().
 */
export interface TcFilterEndpointRecord {
  veth: string;
  tap: string;
  mac: string;
  mtu: number;
  /** The veth's ingress qdisc is ours (deleted with it); false: only our filter (pref HAKO_FILTER_PREF) is. */
  ownVethQdisc: boolean;
}

interface SideState {
  /** We added the ingress qdisc (so deleting it removes our filter too). */
  ownQdisc: boolean;
  /** Our redirect filter is installed on this device. */
  filter: boolean;
}

export class TcFilterEndpoint implements NetworkEndpoint {
  readonly name: string;
  readonly tapName: string;
  readonly mac: string;
  readonly mtu: number;
  readonly netnsPath: string;

  private readonly run: NetnsRunner;
  private readonly retries: { attempts: number; backoffMs: number };
  private tapCreated = false;
  private readonly veth: SideState = { ownQdisc: false, filter: false };
  private readonly tap: SideState = { ownQdisc: false, filter: false };
  private attached = false;

  private constructor(opts: TcFilterEndpointOptions & { tapName: string; mac: string; mtu: number; runner: NetnsRunner }) {
    this.netnsPath = opts.netnsPath;
    this.name = opts.veth;
    this.tapName = opts.tapName;
    this.mac = opts.mac;
    this.mtu = opts.mtu;
    this.run = opts.runner;
    this.retries = opts.busyRetries ?? { attempts: 5, backoffMs: 10 };
  }

  /**
   * An endpoint for an interface whose MAC and MTU are already known (from
   * scanNetns), so no command runs. Changes nothing in the netns.
   */
  static forInterface(opts: Omit<TcFilterEndpointOptions, "veth" | "tapIndex"> & { iface: { name: string; mac: string; mtu: number }; tapIndex: number }): TcFilterEndpoint {
    const { iface, netnsPath } = opts;
    if (HAKO_TAP_PATTERN.test(iface.name)) {
      throw new ResourceError(netnsPath, `interface ${iface.name} in netns ${netnsPath} is a hako tap, not a pod interface`, { hint: "pass the CNI-created interface (e.g. eth0)" });
    }
    if (iface.mac === "") throw new ResourceError(netnsPath, `interface ${iface.name} in netns ${netnsPath} has no MAC address`, { hint: "the tcfilter model carries Ethernet interfaces only" });
    return new TcFilterEndpoint({
      ...opts,
      veth: iface.name,
      runner: opts.runner ?? nsenterRunner(netnsPath),
      tapName: tapNameFor(opts.tapIndex),
      mac: iface.mac.toLowerCase(),
      mtu: iface.mtu,
    });
  }

  /**
   * The endpoint a record describes, taken as attached: detach() then removes
   * the tap, our filter and (if the record says it is ours) the veth's qdisc,
   * tolerating any of them, or the whole netns, being gone already.
   */
  static fromRecord(netnsPath: string, rec: TcFilterEndpointRecord, opts: Pick<TcFilterEndpointOptions, "runner" | "busyRetries"> = {}): TcFilterEndpoint {
    const ep = new TcFilterEndpoint({ ...opts, netnsPath, veth: rec.veth, runner: opts.runner ?? nsenterRunner(netnsPath), tapName: rec.tap, mac: rec.mac, mtu: rec.mtu });
    ep.tapCreated = true;
    ep.veth.ownQdisc = rec.ownVethQdisc;
    ep.veth.filter = true;
    ep.tap.ownQdisc = ep.tap.filter = true;
    ep.attached = true;
    return ep;
  }

  /** What to persist to undo this endpoint from another process. */
  record(): TcFilterEndpointRecord {
    return { veth: this.name, tap: this.tapName, mac: this.mac, mtu: this.mtu, ownVethQdisc: this.veth.ownQdisc };
  }

  /** Reads the veth's MAC and MTU and chooses the tap name. Changes nothing in the netns. */
  static async create(opts: TcFilterEndpointOptions): Promise<TcFilterEndpoint> {
    const run = opts.runner ?? nsenterRunner(opts.netnsPath);
    const ns = opts.netnsPath;
    if (HAKO_TAP_PATTERN.test(opts.veth)) {
      throw new ResourceError(ns, `interface ${opts.veth} in netns ${ns} is a hako tap, not a pod interface`, { hint: "pass the CNI-created interface (e.g. eth0)" });
    }
    let links;
    try {
      links = parseJsonArray(await run("ip", ["-j", "link", "show"]), "ip -j link");
    } catch (err) {
      throw wrap(ns, opts.veth, "reading links", err, "check that the netns exists and iproute2 supports -j");
    }
    const link = links.find((l) => l["ifname"] === opts.veth);
    if (link === undefined) {
      throw new ResourceError(ns, `interface ${opts.veth} not found in netns ${ns}`, { hint: "check the CNI result; the pod interface must exist before the endpoint is created" });
    }
    const mac = typeof link["address"] === "string" ? link["address"].toLowerCase() : "";
    const mtu = typeof link["mtu"] === "number" ? link["mtu"] : 1500;
    if (link["link_type"] !== "ether" || mac === "") {
      throw new ResourceError(ns, `interface ${opts.veth} in netns ${ns} is not an Ethernet device (link_type ${String(link["link_type"])})`, { hint: "the tcfilter model carries Ethernet interfaces only" });
    }
    let index = opts.tapIndex;
    if (index === undefined) {
      const used = new Set(links.map((l) => l["ifname"]));
      index = 0;
      while (used.has(tapNameFor(index))) index++;
    }
    return new TcFilterEndpoint({ ...opts, runner: run, tapName: tapNameFor(index), mac, mtu });
  }

  /**
   * Creates the tap (or takes `handedOverTap`, a tap a cached VM already
   * holds, moved into this netns: renamed to this endpoint's tap name) and
   * the two redirect filters.
   */
  async attach(handedOverTap?: string): Promise<void> {
    if (this.attached) return;
    try {
      if (handedOverTap === undefined) await this.createTap();
      else await this.takeTap(handedOverTap);
      await this.addQdiscsAndRedirects();
      this.attached = true;
    } catch (err) {
      await this.detach().catch(() => undefined);
      throw err;
    }
  }

  async detach(): Promise<void> {
    const problems: string[] = [];
    const step = async (what: string, args: { tool: "ip" | "tc"; argv: string[] }, done: () => void): Promise<boolean> => {
      try {
        await this.withBusyRetry(() => this.run(args.tool, args.argv));
        done();
      } catch (err) {
        if (err instanceof NetnsCommandError && err.netnsMissing) {
          this.forgetAll();
          return false;
        }
        if (err instanceof NetnsCommandError && err.notFound) done();
        else problems.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
      }
      return true;
    };
    // The veth is not ours: remove only our qdisc, or only our filter from a shared qdisc.
    if (this.veth.ownQdisc) {
      if (!(await step(`removing ingress qdisc from ${this.name}`, { tool: "tc", argv: ["qdisc", "del", "dev", this.name, "ingress"] }, () => {
        this.veth.ownQdisc = false;
        this.veth.filter = false;
      }))) return;
    } else if (this.veth.filter) {
      if (!(await step(`removing redirect filter from ${this.name}`, { tool: "tc", argv: ["filter", "del", "dev", this.name, "parent", "ffff:", "protocol", "all", "pref", String(HAKO_FILTER_PREF), "u32"] }, () => {
        this.veth.filter = false;
      }))) return;
    }
    // Deleting the tap takes its qdisc and filter with it.
    if (this.tapCreated) {
      if (!(await step(`deleting tap ${this.tapName}`, { tool: "ip", argv: ["link", "del", "dev", this.tapName] }, () => {
        this.tapCreated = false;
        this.tap.ownQdisc = false;
        this.tap.filter = false;
      }))) return;
    }
    if (problems.length > 0) {
      throw new ResourceError(this.netnsPath, `detaching ${this.name} (tap ${this.tapName}) in netns ${this.netnsPath} failed: ${problems.join("; ")}`, {
        hint: `retry the delete; by hand: nsenter --net=${this.netnsPath} tc qdisc del dev ${this.name} ingress; nsenter --net=${this.netnsPath} ip link del ${this.tapName}`,
      });
    }
    this.attached = false;
  }

  private forgetAll(): void {
    this.tapCreated = false;
    this.veth.ownQdisc = this.veth.filter = false;
    this.tap.ownQdisc = this.tap.filter = false;
    this.attached = false;
  }

  private async createTap(): Promise<void> {
    try {
      await this.run("ip", ["tuntap", "add", "dev", this.tapName, "mode", "tap"]);
    } catch (err) {
      const exists = err instanceof NetnsCommandError && (err.exists || /Device or resource busy/i.test(err.stderr));
      throw wrap(this.netnsPath, this.tapName, "creating tap", err, exists
        ? `a device named ${this.tapName} already exists (stale from an earlier run?); remove it with \`nsenter --net=${this.netnsPath} ip link del ${this.tapName}\` or pick another tap index`
        : "the tun module and /dev/net/tun are required; check `ip tuntap add mode tap` works as root");
    }
    this.tapCreated = true;
    try {
      await this.run("ip", ["link", "set", "dev", this.tapName, "mtu", String(this.mtu), "up"]);
    } catch (err) {
      throw wrap(this.netnsPath, this.tapName, `setting MTU ${this.mtu} and up`, err, "check the veth MTU is within the tap's limits (68..65521)");
    }
  }

  private async takeTap(name: string): Promise<void> {
    try {
      await this.run("ip", ["link", "set", "dev", name, "name", this.tapName, "mtu", String(this.mtu), "up"]);
    } catch (err) {
      throw wrap(this.netnsPath, name, `renaming the handed-over tap to ${this.tapName} (MTU ${this.mtu}, up)`, err, "the cached VM's tap must have been moved into this netns; see `hako factory status`");
    }
    this.tapCreated = true;
  }

  /**
   * An ingress qdisc on both devices, then a redirect filter on each to the
   * other, in that order, as one `tc -batch` (one process instead of four: a
   * pod start's guest competes with them for the host's CPU). tc stops at the
   * first failing line and names it; the lines before it took effect. A qdisc
   * that exists already (another component's, e.g. a CNI plugin's) is shared
   * and never deleted; a busy one is retried; any other failure is thrown.
   * The batch then goes on from the line after (or at) the failed one.
   */
  private async addQdiscsAndRedirects(): Promise<void> {
    const qdisc = (dev: string, side: SideState): TcStep => ({
      argv: ["qdisc", "add", "dev", dev, "ingress"],
      done: () => (side.ownQdisc = true),
      fail: (err) => {
        if (err.exists) return "skip";
        return wrap(this.netnsPath, dev, "adding the ingress qdisc", err, "the sch_ingress module is required; check `tc qdisc add dev <dev> ingress` works in a test netns");
      },
    });
    const redirect = (from: string, to: string, side: SideState): TcStep => ({
      argv: ["filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "pref", String(HAKO_FILTER_PREF), "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", to],
      done: () => (side.filter = true),
      fail: (err) => wrap(this.netnsPath, from, `adding the redirect filter to ${to}`, err, "the cls_u32 and act_mirred modules are required; a filter at pref " + HAKO_FILTER_PREF + " may already exist on the device"),
    });
    let steps = [qdisc(this.name, this.veth), qdisc(this.tapName, this.tap), redirect(this.name, this.tapName, this.veth), redirect(this.tapName, this.name, this.tap)];
    let busyTries = 0;
    while (steps.length > 0) {
      const failed = await this.tcBatch(steps.map((st) => st.argv));
      const upTo = failed === undefined ? steps.length : failed.line;
      for (const st of steps.slice(0, upTo)) st.done();
      if (failed === undefined) return;
      const step = steps[failed.line]!;
      if (failed.error.busy && ++busyTries < this.retries.attempts) {
        await sleep(this.retries.backoffMs);
        steps = steps.slice(failed.line);
        continue;
      }
      const outcome = step.fail(failed.error);
      if (outcome !== "skip") throw outcome;
      steps = steps.slice(failed.line + 1);
    }
  }

  private async withBusyRetry<T>(fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (!(err instanceof NetnsCommandError && err.busy) || attempt >= this.retries.attempts) throw err;
        await sleep(this.retries.backoffMs);
      }
    }
  }

  /** Runs the commands as one `tc -batch -`; undefined if all took effect, else the failed one (0-based) and its error. */
  private async tcBatch(lines: readonly string[][]): Promise<{ line: number; error: NetnsCommandError } | undefined> {
    try {
      await this.run("tc", ["-batch", "-"], lines.map((l) => `${l.join(" ")}\n`).join(""));
      return undefined;
    } catch (err) {
      if (!(err instanceof NetnsCommandError)) throw err;
      const where = parseBatchFailure(err.stderr);
      // No line named (tc did not start, or the netns is gone): the first command carries the error.
      const line = where !== undefined && where.line >= 1 && where.line <= lines.length ? where.line - 1 : 0;
      const text = where?.message ?? err.stderr;
      return { line, error: new NetnsCommandError(err.netnsPath, `tc ${lines[line]!.join(" ")}`, text, err.exitCode, err) };
    }
  }
}

interface TcStep {
  argv: string[];
  /** Records that the step took effect. */
  done: () => void;
  /** What its failure means: "skip" (fine, go on) or the error to throw. */
  fail: (err: NetnsCommandError) => "skip" | Error;
}

/**
 * `tc -batch`'s report of the line it stopped at: "Command failed -:N" after
 * the failed command's own messages. Undefined when there is no such line.
 */
export function parseBatchFailure(stderr: string): { line: number; message: string } | undefined {
  const lines = stderr.split("\n");
  const at = lines.findIndex((l) => /^Command failed .*:\d+$/.test(l.trim()));
  if (at < 0) return undefined;
  const line = Number(/:(\d+)$/.exec(lines[at]!.trim())![1]);
  return { line, message: lines.slice(0, at).join("\n").trim() };
}

function wrap(netnsPath: string, device: string, what: string, err: unknown, hint: string): ResourceError {
  if (err instanceof ResourceError) return err;
  const detail = err instanceof NetnsCommandError ? err.stderr.trim() : err instanceof Error ? err.message : String(err);
  const missing = err instanceof NetnsCommandError && err.netnsMissing;
  return new ResourceError(netnsPath, `${what} on ${device} in netns ${netnsPath} failed: ${detail}`, {
    hint: missing ? "the netns is gone; the pod sandbox was probably deleted" : hint,
    cause: err,
  });
}
