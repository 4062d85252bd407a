// Copies a guest process's stdio between the agent's pull/push RPCs and host
// streams (a terminal, pipes, or containerd's fifos).
import type { Readable, Writable } from "node:stream";
import type { AgentApi } from "./agent-client.js";

const CHUNK = 1024 * 1024;

function writeAll(dest: Writable, data: Uint8Array): Promise<void> {
  return new Promise((resolve) => {
    if (dest.destroyed || dest.writableEnded) return resolve();
    const ok = dest.write(data, () => undefined);
    if (ok) resolve();
    else {
      const done = (): void => {
        dest.off("drain", done);
        dest.off("error", done);
        dest.off("close", done);
        resolve();
      };
      dest.on("drain", done);
      dest.on("error", done);
      dest.on("close", done);
    }
  });
}

/** Pulls stdout or stderr until EOF and writes it to `dest`. */
export async function pumpOutput(
  agent: AgentApi,
  which: "stdout" | "stderr",
  containerId: string,
  execId: string,
  dest: Writable | undefined,
  signal?: AbortSignal,
): Promise<void> {
  for (;;) {
    if (signal?.aborted) return;
    const req = { containerId, execId, len: CHUNK };
    const res = which === "stdout" ? await agent.readStdout(req, { signal }) : await agent.readStderr(req, { signal });
    if (res.data.length > 0 && dest) await writeAll(dest, res.data);
    if (res.eof) return;
  }
}

/** Forwards `src` into the process's stdin; closes stdin at EOF. Returns a stopper. */
export function pumpInput(agent: AgentApi, containerId: string, execId: string, src: Readable): () => void {
  let stopped = false;
  let chain = Promise.resolve();
  const onData = (chunk: Buffer): void => {
    src.pause();
    chain = chain
      .then(() => agent.writeStdin({ containerId, execId, data: chunk }).then(() => undefined))
      .catch(() => {
        stopped = true;
      })
      .finally(() => {
        if (!stopped) src.resume();
      });
  };
  const onEnd = (): void => {
    chain = chain.then(() => agent.closeStdin({ containerId, execId }).then(() => undefined)).catch(() => undefined);
  };
  src.on("data", onData);
  src.once("end", onEnd);
  src.resume();
  return () => {
    stopped = true;
    src.off("data", onData);
    src.off("end", onEnd);
    src.pause();
  };
}
