// The process that owns a sandbox (hako run, later the shim) holds the only
// connection to the guest agent. Other hako commands reach the agent through
// this proxy socket, which forwards ttRPC calls unchanged.
import { join } from "node:path";
import type { Server } from "node:net";
import { TtrpcServer } from "../protocols/ttrpc/server.js";
import type { AgentClient } from "./agent-client.js";

export function proxySocketPath(sandboxDir: string): string {
  return join(sandboxDir, "agent-proxy.sock");
}

export async function startAgentProxy(sandboxDir: string, agent: AgentClient): Promise<{ close(): Promise<void> }> {
  const server = new TtrpcServer();
  server.setFallback((service, method, payload, ctx) => {
    const timeoutMs = ctx.deadline ? Math.max(1, ctx.deadline - Date.now()) : undefined;
    return agent.raw.call(service, method, payload, { timeoutMs, signal: ctx.signal, metadata: ctx.metadata });
  });
  const listener: Server = await server.listen(proxySocketPath(sandboxDir));
  return {
    close: async () => {
      await server.close();
      listener.close();
    },
  };
}
