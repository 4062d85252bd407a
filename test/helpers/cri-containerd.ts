// A private containerd with the CRI plugin on, for the Kubernetes-level
// tests: runtime handlers `hako` (our shim, with the test configuration as
// its ConfigPath option) and `runc`, a CNI bridge + host-local network of its
// own, and the busybox and pause images imported into `k8s.io`.
//
// What cannot be private (host-notes.md): pod netns are /var/run/netns/cni-*,
// CNI caches results in /var/lib/cni/results, and the bridge is a host link.
// stop() removes the bridge and this network's cached results; the tests
// assert that no netns they caused is left. A caller that runs beside the
// tests (the benchmark) passes its own network and hako configuration: two
// harnesses on one bridge would hand out the same addresses from their own
// IPAM dirs, and the first to stop would delete the other's bridge.
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { importBusybox, startContainerd, type Containerd } from "./containerd.js";
import { BUSYBOX_REF, PAUSE_CMD, PAUSE_REF } from "./oci-image.js";
import { ensureTestConfig } from "./hako.js";
import { listNetns } from "./leaks.js";
import { CriClient } from "../../src/cli/cri/cri-client.js";

export const CNI_NETWORK = "hako-test-pods";
export const CNI_BRIDGE = "hakotest0";
/** Not 10.88.0.0/16 (podman's default, host-notes). */
export const CNI_SUBNET = "10.217.0.0/24";
export const CNI_GATEWAY = "10.217.0.1";
const CNI_BIN_DIR = "/usr/lib/cni";
const CNI_RESULTS_DIR = "/var/lib/cni/results";

/** The CNI bridge network of one harness. */
export interface CniNetwork {
  name: string;
  bridge: string;
  subnet: string;
  gateway: string;
}

/** The integration tests' network. */
export const TEST_NETWORK: CniNetwork = { name: CNI_NETWORK, bridge: CNI_BRIDGE, subnet: CNI_SUBNET, gateway: CNI_GATEWAY };

export interface StartCriContainerdOptions {
  /** The hako configuration file (the `hako` handler's ConfigPath); default: the test configuration. */
  hakoConfig?: string;
  /** Default: TEST_NETWORK. */
  network?: CniNetwork;
  /** More hako runtime handlers: name → their ConfigPath (e.g. "hako-template" with templating on). */
  extraHakoHandlers?: Record<string, string>;
}

export interface CriContainerd extends Containerd {
  /** unix:// address for CRI clients. */
  criAddress: string;
  busybox: string;
  pause: string;
  network: CniNetwork;
}

function cniConfList(network: CniNetwork, ipamDir: string): string {
  return JSON.stringify(
    {
      cniVersion: "1.0.0",
      name: network.name,
      plugins: [
        {
          type: "bridge",
          bridge: network.bridge,
          isGateway: true,
          ipMasq: false,
          hairpinMode: true,
          ipam: { type: "host-local", ranges: [[{ subnet: network.subnet, gateway: network.gateway }]], routes: [{ dst: "0.0.0.0/0" }], dataDir: ipamDir },
        },
      ],
    },
    null,
    2,
  );
}

function criToml(dir: string, hakoConfig: string, network: CniNetwork, extraHakoHandlers: Record<string, string> = {}): string {
  const cniConf = join(dir, "cni", "net.d");
  mkdirSync(cniConf, { recursive: true });
  writeFileSync(join(cniConf, `10-${network.name}.conflist`), cniConfList(network, join(dir, "cni", "ipam")));
  const s = JSON.stringify;
  return [
    '[plugins."io.containerd.grpc.v1.cri"]',
    `  sandbox_image = ${s(PAUSE_REF)}`,
    // Root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj (host-notes).
    "  restrict_oom_score_adj = true",
    '  [plugins."io.containerd.grpc.v1.cri".containerd]',
    '    default_runtime_name = "runc"',
    '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
    '      runtime_type = "io.containerd.runc.v2"',
    '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hako]',
    '      runtime_type = "io.containerd.hako.v2"',
    '      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hako.options]',
    `        ConfigPath = ${s(hakoConfig)}`,
    ...Object.entries(extraHakoHandlers).flatMap(([name, config]) => [
      `    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.${s(name)}]`,
      '      runtime_type = "io.containerd.hako.v2"',
      `      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.${s(name)}.options]`,
      `        ConfigPath = ${s(config)}`,
    ]),
    '  [plugins."io.containerd.grpc.v1.cri".cni]',
    `    bin_dir = ${s(CNI_BIN_DIR)}`,
    `    conf_dir = ${s(cniConf)}`,
    "    max_conf_num = 1",
    "",
  ].join("\n");
}

/** Removes the host side of a harness network: the bridge and cached CNI results. */
export function removeTestNetwork(network: CniNetwork = TEST_NETWORK): void {
  if (existsSync(`/sys/class/net/${network.bridge}`)) spawnSync("ip", ["link", "del", network.bridge], { stdio: "ignore" });
  for (const f of cniResults(network)) rmSync(f, { force: true });
}

/** CNI's cached results of `network` (files <name>-<container id>-<ifname>). */
export function cniResults(network: CniNetwork): string[] {
  return existsSync(CNI_RESULTS_DIR) ? readdirSync(CNI_RESULTS_DIR).filter((f) => f.startsWith(`${network.name}-`)).map((f) => join(CNI_RESULTS_DIR, f)) : [];
}

/** Pod network namespaces CNI created on this host (cni-*). */
export function cniNetns(): string[] {
  return listNetns().filter((n) => n.startsWith("cni-"));
}

/**
 * Stops and removes every pod through CRI, so that CNI is torn down and the
 * pod netns are deleted (ctr, which the base harness uses, knows nothing of
 * either). Errors are collected, not thrown: stop() must go on.
 */
async function removeAllPods(address: string): Promise<string[]> {
  const problems: string[] = [];
  const cri = new CriClient(address, { defaultTimeoutMs: 60_000 });
  try {
    for (const pod of await cri.listPodSandbox()) {
      await cri.stopPodSandbox(pod.id).catch((e: Error) => problems.push(`StopPodSandbox ${pod.id}: ${e.message}`));
      await cri.removePodSandbox(pod.id).catch((e: Error) => problems.push(`RemovePodSandbox ${pod.id}: ${e.message}`));
    }
  } catch (e) {
    problems.push(`ListPodSandbox: ${(e as Error).message}`);
  } finally {
    cri.close();
  }
  return problems;
}

export async function startCriContainerd(opts: StartCriContainerdOptions = {}): Promise<CriContainerd> {
  const hakoConfig = opts.hakoConfig ?? ensureTestConfig();
  const network = opts.network ?? TEST_NETWORK;
  const c = await startContainerd({
    namespace: "k8s.io",
    criConfig: (dir) => criToml(dir, hakoConfig, network, opts.extraHakoHandlers),
    afterStop: () => removeTestNetwork(network),
  });
  const criAddress = `unix://${c.address}`;
  const stopDaemon = c.stop;
  const stop = async (): Promise<void> => {
    if (c.pid() !== undefined) {
      const problems = await removeAllPods(criAddress);
      if (problems.length) process.stderr.write(`cri-containerd: cleanup: ${problems.join("; ")}\n`);
    }
    await stopDaemon();
  };
  try {
    const busybox = await importBusybox(c, BUSYBOX_REF);
    const pause = await importBusybox(c, PAUSE_REF, PAUSE_CMD);
    return Object.assign(c, { criAddress, busybox, pause, network, stop });
  } catch (err) {
    await stop();
    throw err;
  }
}
