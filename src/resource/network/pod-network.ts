// A sandbox's share of a pod network namespace: what scanNetns found there
// and one tcfilter endpoint per interface. It owns the taps and filters it
// adds and nothing else; its record (persisted in state.json) lets another
// process remove them after the owner died.
import { ResourceError } from "../../runtime/errors.js";
import type { NetnsRunner } from "./netns-exec.js";
import { scanNetns } from "./netns-scan.js";
import type { NetnsScan } from "./network-endpoint.js";
import { TcFilterEndpoint, type TcFilterEndpointRecord } from "./tc-filter-endpoint.js";

/** The tcfilter plumbing a sandbox added to a netns, as persisted in its state.json. */
export interface PodNetworkRecord {
  model: "tcfilter";
  netnsPath: string;
  endpoints: TcFilterEndpointRecord[];
}

export interface PodNetworkOptions {
  /** Injected for tests; defaults to nsenter into the netns. */
  runner?: NetnsRunner;
}

export class PodNetwork {
  private constructor(
    readonly netnsPath: string,
    /** What the guest must replicate (empty for a network rebuilt from a record). */
    readonly scan: NetnsScan,
    readonly endpoints: readonly TcFilterEndpoint[],
  ) {}

  /** Scans the netns and plans one endpoint (tap<N>_hako, N = 0, 1, …) per interface. Changes nothing in the netns. */
  static async open(netnsPath: string, opts: PodNetworkOptions = {}): Promise<PodNetwork> {
    const scan = await scanNetns(netnsPath, { runner: opts.runner });
    const endpoints = scan.interfaces.map((iface, tapIndex) => TcFilterEndpoint.forInterface({ netnsPath, iface, tapIndex, runner: opts.runner }));
    return new PodNetwork(netnsPath, scan, endpoints);
  }

  /** The network a record describes, taken as attached: only detach() is meaningful on it. */
  static fromRecord(rec: PodNetworkRecord, opts: PodNetworkOptions = {}): PodNetwork {
    const endpoints = rec.endpoints.map((e) => TcFilterEndpoint.fromRecord(rec.netnsPath, e, { runner: opts.runner }));
    return new PodNetwork(rec.netnsPath, { interfaces: [], routes: [], neighbors: [] }, endpoints);
  }

  record(): PodNetworkRecord {
    return { model: "tcfilter", netnsPath: this.netnsPath, endpoints: this.endpoints.map((e) => e.record()) };
  }

  /**
   * Creates every endpoint's tap and filters; on failure removes what was
   * created and rethrows. `handedOverTaps[i]`: endpoint i takes that tap (a
   * cached VM's, already moved into this netns) instead of creating one.
   */
  async attach(handedOverTaps: readonly string[] = []): Promise<void> {
    try {
      for (const [i, ep] of this.endpoints.entries()) await ep.attach(handedOverTaps[i]);
    } catch (err) {
      await this.detach().catch(() => undefined);
      throw err;
    }
  }

  /** Removes every endpoint's plumbing. Idempotent; a netns that is gone counts as clean. One error lists every failure. */
  async detach(): Promise<void> {
    const failures: ResourceError[] = [];
    for (const ep of this.endpoints) {
      try {
        await ep.detach();
      } catch (err) {
        failures.push(err instanceof ResourceError ? err : new ResourceError(this.netnsPath, String(err), { cause: err }));
      }
    }
    if (failures.length === 1) throw failures[0]!;
    if (failures.length > 1) {
      throw new ResourceError(this.netnsPath, `removing ${failures.length} endpoints from netns ${this.netnsPath} failed: ${failures.map((f) => f.message).join(" | ")}`, { cause: failures[0] });
    }
  }
}

/** Checks the shape of a record read back from state.json (written by an older or newer hako, or edited). */
export function isPodNetworkRecord(v: unknown): v is PodNetworkRecord {
  if (typeof v !== "object" || v === null) return false;
  const r = v as Record<string, unknown>;
  if (r["model"] !== "tcfilter" || typeof r["netnsPath"] !== "string" || r["netnsPath"] === "" || !Array.isArray(r["endpoints"])) return false;
  return r["endpoints"].every((e: unknown) => {
    if (typeof e !== "object" || e === null) return false;
    const x = e as Record<string, unknown>;
    return typeof x["veth"] === "string" && typeof x["tap"] === "string" && typeof x["mac"] === "string" && typeof x["mtu"] === "number" && typeof x["ownVethQdisc"] === "boolean";
  });
}

/**
 * Removes what a recorded network added to its netns (after the owner died).
 * A missing or malformed record is nothing to do; a netns that is gone is clean.
 */
export async function removeRecordedNetwork(rec: unknown, opts: PodNetworkOptions = {}): Promise<void> {
  if (!isPodNetworkRecord(rec)) return;
  await PodNetwork.fromRecord(rec, opts).detach();
}
