// hako-agent: runs inside the guest VM (started by busybox init), serves the
// AgentService over ttRPC on the virtio-serial port "agent.channel.0".
import { openSync, closeSync, createReadStream, createWriteStream, readdirSync, readFileSync } from "node:fs";
import { Duplex } from "node:stream";
import { createLogger } from "../runtime/logger.js";
import { TtrpcServer } from "../protocols/ttrpc/server.js";
import { registerAgentServices } from "./agent-service.js";
import { uptimeSec } from "./guest-system.js";
import { AGENT_CHANNEL_NAME } from "./version.js";

const log = createLogger("hako-agent", { level: process.env.HAKO_AGENT_LOG_LEVEL ?? "warn" });

function findPort(name: string): string | undefined {
  const base = "/sys/class/virtio-ports";
  let entries: string[] = [];
  try {
    entries = readdirSync(base);
  } catch {
    return undefined;
  }
  for (const e of entries) {
    try {
      if (readFileSync(`${base}/${e}/name`, "utf8").trim() === name) return `/dev/${e}`;
    } catch {
      /* port without a name */
    }
  }
  return undefined;
}

async function waitForPort(name: string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = findPort(name);
    if (p) return p;
    if (Date.now() > deadline) throw new Error(`virtio-serial port ${name} did not appear in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Serves one host connection on the port; resolves when the host side closes. */
async function serveOnce(server: TtrpcServer, path: string): Promise<void> {
  const fd = openSync(path, "r+");
  const readable = createReadStream("", { fd, autoClose: false, highWaterMark: 256 * 1024 });
  const writable = createWriteStream("", { fd, autoClose: false });
  const handle = server.serve(Duplex.from({ readable, writable }));
  readable.on("error", () => handle.close());
  writable.on("error", () => handle.close());
  await handle.closed;
  try {
    closeSync(fd);
  } catch {
    /* already closed */
  }
}

async function main(): Promise<void> {
  const port = await waitForPort(AGENT_CHANNEL_NAME, 30_000);
  const server = new TtrpcServer({ logger: log });
  let readyMs = 0;
  registerAgentServices(server, log, () => readyMs);
  readyMs = uptimeSec() * 1000;
  log.info({ port, readyMs }, "hako-agent serving");
  for (;;) {
    await serveOnce(server, port);
    // The host closed its end; wait for it to come back (e.g. a restarted shim).
    await new Promise((r) => setTimeout(r, 100));
  }
}

main().catch((err: unknown) => {
  log.fatal({ err }, "hako-agent failed");
  process.exit(1);
});
