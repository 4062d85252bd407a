// The host's view of the guest agent: typed ttRPC clients over the VM's
// virtio-serial channel (a unix socket QEMU listens on).
import { connect, type Socket } from "node:net";
import { AgentService } from "../protocols/gen/hako/agent/v1/agent_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../protocols/gen/hako/agent/v1/health_pb.js";
import { TtrpcClient, createServiceClient, type ServiceClient } from "../protocols/ttrpc/client.js";
import { Code, TtrpcError } from "../protocols/ttrpc/status.js";
import { AgentError } from "./errors.js";

export type AgentApi = ServiceClient<typeof AgentService>;
export type HealthApi = ServiceClient<typeof Health>;

export interface AgentClient {
  readonly agent: AgentApi;
  readonly health: HealthApi;
  /** Resolves when the connection to the agent is gone. */
  readonly closed: Promise<void>;
  /** The underlying ttRPC connection, for forwarding raw calls. */
  readonly raw: TtrpcClient;
  /** Guest uptime (ms) when init launched the agent, from the first health check; 0 if unknown. */
  guestAgentLaunchMs: number;
  close(): void;
}

function dialUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    s.once("connect", () => {
      s.removeListener("error", reject);
      resolve(s);
    });
    s.once("error", reject);
  });
}

class TtrpcAgentClient implements AgentClient {
  readonly agent: AgentApi;
  readonly health: HealthApi;
  readonly closed: Promise<void>;
  guestAgentLaunchMs = 0;

  constructor(readonly raw: TtrpcClient) {
    const client = raw;
    this.agent = createServiceClient(AgentService, client);
    this.health = createServiceClient(Health, client);
    this.closed = client.closed;
  }

  close(): void {
    this.raw.close();
  }
}

/** Connects to an agent (or a proxy in front of one) listening on a unix socket. */
export async function dialAgent(id: string, socketPath: string): Promise<AgentClient> {
  try {
    const sock = await dialUnix(socketPath);
    return new TtrpcAgentClient(new TtrpcClient(sock));
  } catch (err) {
    throw new AgentError(id, `cannot connect to the agent of ${id} at ${socketPath}: ${(err as Error).message}`, {
      cause: err,
      hint: "is the sandbox still running? see `hako list`",
    });
  }
}

/**
 * Connects to QEMU's agent channel and waits until the agent answers a health
 * check. QEMU holds the bytes until the guest opens its port, so one check
 * with the whole boot budget is enough; `vmExited` cuts the wait short.
 */
export async function connectAgentWhenReady(
  id: string,
  socketPath: string,
  timeoutMs: number,
  vmExited: Promise<unknown>,
  signal?: AbortSignal,
): Promise<AgentClient> {
  const client = await dialAgent(id, socketPath);
  const exited = vmExited.then(() => {
    throw new AgentError(id, `the VM of ${id} exited before its agent answered`, { hint: "see the console log for the guest kernel's messages" });
  });
  try {
    const res = await Promise.race([client.health.check({}, { timeoutMs, signal }), exited]);
    if (res.status !== HealthCheckResponse_ServingStatus.SERVING) throw new AgentError(id, `agent of ${id} is not serving`);
    client.guestAgentLaunchMs = Number(res.agentLaunchMs);
    return client;
  } catch (err) {
    client.close();
    if (err instanceof TtrpcError && err.code === Code.DEADLINE_EXCEEDED)
      throw new AgentError(id, `the agent of ${id} did not answer within ${timeoutMs} ms`, {
        code: Code.DEADLINE_EXCEEDED,
        hint: "raise agent.dial_timeout or look at the console log",
      });
    throw err;
  }
}
