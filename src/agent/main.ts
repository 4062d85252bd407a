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

/**
 * Serves one host connection on the open port; resolves when the host side
 * closes (reads then return EOF until a host connects again), or with
 * "error" when the port itself failed.
 */
async function serveOnce(server: TtrpcServer, fd: number): Promise<"closed" | "error"> {
  const readable = createReadStream("", { fd, autoClose: false, highWaterMark: 256 * 1024 });
  const writable = createWriteStream("", { fd, autoClose: false });
  const handle = server.serve(Duplex.from({ readable, writable }));
  let failed = false;
  const fail = (): void => {
    failed = true;
    handle.close();
  };
  readable.on("error", fail);
  writable.on("error", fail);
  await handle.closed;
  return failed ? "error" : "closed";
}

async function main(): Promise<void> {
  const port = await waitForPort(AGENT_CHANNEL_NAME, 30_000);
  const server = new TtrpcServer({ logger: log });
  let readyMs = 0;
  registerAgentServices(server, log, () => readyMs);
  readyMs = uptimeSec() * 1000;
  log.info({ port, readyMs }, "hako-agent serving");
  // The port stays open across host connections: closing it discards what
  // the guest has not read yet, and a new host (a restarted shim, or the
  // first one of a VM cloned from a template, which may still see the
  // template builder's hang-up) can have sent its first request already.
  let fd = openSync(port, "r+");
  for (;;) {
    const how = await serveOnce(server, fd);
    if (how === "error") {
      try {
        closeSync(fd);
      } catch {
        /* already closed */
      }
      await new Promise((r) => setTimeout(r, 100));
      fd = openSync(port, "r+");
      continue;
    }
    // The host hung up: reads return EOF until one connects again.
    await new Promise((r) => setTimeout(r, 100));
  }
}

main().catch((err: unknown) => {
  log.fatal({ err }, "hako-agent failed");
  process.exit(1);
});
