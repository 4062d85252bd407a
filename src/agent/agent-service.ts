// The AgentService and Health implementations served over ttRPC in the guest.
import { mkdirSync } from "node:fs";
import { Code } from "../protocols/ttrpc/status.js";
import { GUEST_POD_SHM_DIR } from "../runtime/oci-spec.js";
import { AgentError } from "../runtime/errors.js";
import type { Logger } from "../runtime/logger.js";
import { AgentService } from "../protocols/gen/hako/agent/v1/agent_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../protocols/gen/hako/agent/v1/health_pb.js";
import type { TtrpcServer } from "../protocols/ttrpc/server.js";
import { ContainerManager } from "./containers.js";
import { addNeighbors, inArrivalOrder, updateInterface, updateRoutes } from "./guest-network.js";
import { agentLaunchMs, guestDetails, mixEntropy, mountStorage, setClock, setDns, setHostname, syncClock, unmount } from "./guest-system.js";
import type { GuestStorage } from "../resource/sharefs/share-fs.js";
import { WARM_UP_CONTAINER, collectAfterWarmUp, warmUp, warmUpNetworkTools, warmUpNics, warmUpSpec, warmUpSteps, type GcFunction } from "./warm-up.js";
import { PodPidNamespace, wantsPodPidNamespace, withPodPidNamespace } from "./pod-pid-namespace.js";
import { AGENT_PROTOCOL_VERSION, AGENT_VERSION } from "./version.js";

const MAX_READ = 1024 * 1024;
/** True in a cached VM's agent: its template's PrepareTemplate ran before the save. */
let preparedBefore = false;

export function registerAgentServices(server: TtrpcServer, log: Logger, readyMs: () => number): ContainerManager {
  const containers = new ContainerManager(log);
  const podPidNs = new PodPidNamespace(log);
  const sandboxMounts: string[] = [];
  const containerMounts = new Map<string, string[]>();

  const mountAll = async (list: GuestStorage[]): Promise<string[]> => {
    const done: string[] = [];
    try {
      for (const s of list) {
        await mountStorage(s);
        done.push(s.mountPoint);
      }
    } catch (err) {
      for (const m of done.reverse()) await unmount(m);
      throw err;
    }
    return done;
  };

  // The network RPCs run one at a time, in the order they arrived (the
  // server calls handlers in arrival order): a host may send UpdateRoutes and
  // AddARPNeighbors right behind UpdateInterface without waiting for its
  // answer, and they need the interface configured.
  const networkStep = inArrivalOrder();

  server.register(AgentService, {
    async createSandbox(req) {
      setHostname(req.hostname);
      mkdirSync(GUEST_POD_SHM_DIR, { recursive: true, mode: 0o1777 });
      setDns(req.dns);
      if (req.entropy.length > 0) mixEntropy(req.entropy);
      // A VM cloned from a template needs both (stale clock, share not mounted): the two spawns overlap.
      const clock = syncClock(Number(req.hostTimeUnixNano / 1_000_000n));
      const [, mounted] = await Promise.all([clock, mountAll(req.storages)]);
      sandboxMounts.push(...mounted);
      log.info({ sandbox: req.sandboxId }, "sandbox created");
      return {};
    },
    async destroySandbox() {
      await containers.removeAll();
      for (const m of sandboxMounts.splice(0).reverse()) await unmount(m);
      return {};
    },
    async createContainer(req) {
      const specJson = wantsPodPidNamespace(req.ociSpecJson) ? withPodPidNamespace(req.ociSpecJson, await podPidNs.path()) : req.ociSpecJson;
      const mounted = await mountAll(req.storages);
      try {
        containers.create(req.containerId, specJson, req.terminal);
      } catch (err) {
        for (const m of mounted.reverse()) await unmount(m);
        throw err;
      }
      containerMounts.set(req.containerId, mounted);
      return {};
    },
    async startContainer(req) {
      return { pid: await containers.start(req.containerId) };
    },
    async removeContainer(req) {
      await containers.remove(req.containerId, req.timeout);
      for (const m of (containerMounts.get(req.containerId) ?? []).reverse()) await unmount(m);
      containerMounts.delete(req.containerId);
      return {};
    },
    async execProcess(req) {
      return { pid: await containers.exec(req.containerId, req.execId, req.processJson, req.terminal) };
    },
    async signalProcess(req) {
      await containers.signal(req.containerId, req.execId, req.signal, req.all);
      return {};
    },
    async waitProcess(req) {
      const p = containers.process(req.containerId, req.execId);
      const e = await p.exited;
      const init = !req.execId || req.execId === req.containerId;
      return { status: e.status, oomKilled: init && containers.oomKilled(req.containerId) };
    },
    async writeStdin(req) {
      const p = containers.process(req.containerId, req.execId);
      return { len: await p.write(Buffer.from(req.data)) };
    },
    async readStdout(req, ctx) {
      const p = containers.process(req.containerId, req.execId);
      return p.stdout.read(Math.min(req.len || MAX_READ, MAX_READ), ctx.signal);
    },
    async readStderr(req, ctx) {
      const p = containers.process(req.containerId, req.execId);
      return p.stderr.read(Math.min(req.len || MAX_READ, MAX_READ), ctx.signal);
    },
    async closeStdin(req) {
      containers.process(req.containerId, req.execId).closeStdin();
      return {};
    },
    async ttyWinResize(req) {
      containers.process(req.containerId, req.execId).resize(req.column, req.row);
      return {};
    },
    async statsContainer(req) {
      return containers.stats(req.containerId);
    },
    async pauseContainer(req) {
      await containers.pause(req.containerId);
      return {};
    },
    async resumeContainer(req) {
      await containers.resume(req.containerId);
      return {};
    },
    updateInterface(req) {
      return networkStep(async () => {
        const i = req.interface;
        if (!i) throw new AgentError("", "UpdateInterface: the request has no interface", { code: Code.INVALID_ARGUMENT });
        if (i.mtu > 65535n) throw new AgentError("", `UpdateInterface ${i.name}: MTU ${i.mtu} is outside 68..65535`, { code: Code.INVALID_ARGUMENT });
        const done = await updateInterface({ device: i.device, name: i.name, hwAddr: i.hwAddr, mtu: Number(i.mtu), addresses: i.addresses });
        log.info({ device: done.device, mac: done.hwAddr }, "interface configured");
        return { device: done.device, name: done.name, hwAddr: done.hwAddr, mtu: BigInt(done.mtu), addresses: done.addresses };
      });
    },
    updateRoutes(req) {
      return networkStep(async () => {
        const routes = req.routes?.routes ?? [];
        await updateRoutes(routes);
        return { routes };
      });
    },
    addARPNeighbors(req) {
      return networkStep(async () => {
        await addNeighbors(req.neighbors);
        return {};
      });
    },
    async getGuestDetails() {
      return guestDetails(AGENT_VERSION, readyMs());
    },
    async setGuestDateTime(req) {
      await setClock(req.sec);
      return {};
    },
    async prepareTemplate(req) {
      const t0 = performance.now();
      const steps = warmUpSteps(preparedBefore, req.runContainer);
      for (const step of steps) {
        if (step === "spawns") await warmUp();
        // Its clones' pods find their pid namespace made (each clone has its own holder).
        else if (step === "pod-pid-namespace") await podPidNs.path();
        else if (step === "network-tools") await warmUpNetworkTools();
        else if (step === "nics") await warmUpNics();
        else {
          // A container the way a pod's first one runs.
          containers.create(WARM_UP_CONTAINER, JSON.stringify(warmUpSpec()), false);
          try {
            await containers.start(WARM_UP_CONTAINER);
            await containers.process(WARM_UP_CONTAINER, "").exited;
          } finally {
            await containers.remove(WARM_UP_CONTAINER, 0);
          }
        }
      }
      collectAfterWarmUp((globalThis as { gc?: GcFunction }).gc, preparedBefore);
      preparedBefore = true;
      const ms = performance.now() - t0;
      log.info({ ms, steps }, "warmed up");
      return { warmUpMs: Math.round(ms) };
    },
    async getOOMEvent(_req, ctx) {
      return { containerId: await containers.oom.next(ctx.signal) };
    },
  });

  server.register(Health, {
    check: () => ({ status: HealthCheckResponse_ServingStatus.SERVING, agentLaunchMs: agentLaunchMs() }),
    version: () => ({ agentVersion: AGENT_VERSION, protocolVersion: AGENT_PROTOCOL_VERSION }),
  });
  return containers;
}
