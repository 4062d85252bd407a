// The seam between a pod network namespace (set up by CNI) and the VM. An
// endpoint owns whatever it adds to the netns to carry one interface's traffic
// into the guest (for the tcfilter model: a tap plus two tc redirects), and
// only that. What the guest must configure is described by the plain Guest*
// types, produced by scanNetns() and later sent to the agent.

export interface NetworkEndpoint {
  /** The interface in the pod netns whose traffic is carried (the veth, e.g. eth0). */
  readonly name: string;
  /** The tap the VMM opens (inside the pod netns). */
  readonly tapName: string;
  /** MAC address the guest NIC must use: the veth's. */
  readonly mac: string;
  readonly mtu: number;
  /** Creates the plumbing in the netns. Calling it again once attached is a no-op. */
  attach(): Promise<void>;
  /** Removes what attach() created, and nothing else. Idempotent; succeeds if the netns is gone. */
  detach(): Promise<void>;
}

export type IpFamily = 4 | 6;

export interface GuestAddress {
  family: IpFamily;
  address: string;
  prefixLength: number;
}

export interface GuestInterface {
  /** Name inside the netns; the guest NIC gets the same name. */
  name: string;
  mac: string;
  mtu: number;
  addresses: GuestAddress[];
}

/** Route scopes as iproute2 names them; "global" is the kernel's "universe". */
export type GuestRouteScope = "global" | "site" | "link" | "host" | "nowhere";

export interface GuestRoute {
  family: IpFamily;
  /** Always a CIDR: "0.0.0.0/0" / "::/0" for default, "/32" or "/128" added to host routes. */
  dest: string;
  /** Next hop, or "" for a directly connected route. */
  gateway: string;
  device: string;
  scope: GuestRouteScope;
  /** Preferred source address, or "". */
  source: string;
}

export interface GuestNeighbor {
  family: IpFamily;
  ip: string;
  mac: string;
  device: string;
}

export interface NetnsScan {
  interfaces: GuestInterface[];
  routes: GuestRoute[];
  neighbors: GuestNeighbor[];
}
