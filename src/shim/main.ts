// Entry point of containerd-shim-hako-v2 (bundled into
// build/lib/hako/containerd-shim-hako-v2.mjs). Actions: `start` and `delete`
// (called by containerd), `serve` (the daemon that `start` spawns), `spare`
// (a daemon waiting for the next pod, spare.ts), `-v`.
import { AGENT_VERSION } from "../agent/version.js";
import { parseShimFlags } from "./flags.js";

export const SHIM_NAME = "containerd-shim-hako-v2";
/** serve keeps running on its socket; it exits itself on Shutdown or a signal. */
const SERVING = -1;

async function main(argv: readonly string[]): Promise<number> {
  let flags;
  try {
    flags = parseShimFlags(argv);
  } catch (err) {
    process.stderr.write(`${SHIM_NAME}: ${(err as Error).message}\n`);
    return 2; // Go's flag package exits 2 on usage errors
  }
  switch (flags.action) {
    case "version":
      process.stdout.write(`${SHIM_NAME} version ${AGENT_VERSION} (hako, containerd shim v2, node ${process.version})\n`);
      return 0;
    // Each action loads only its own modules: containerd runs `start` twice
    // per pod (the sandbox's task and each container's) and `delete` as often,
    // each a fresh node process, on the pod-start path.
    case "start":
      return (await import("./start.js")).runStart(flags);
    case "delete":
      return (await import("./delete.js")).runDelete(flags);
    case "serve": {
      const { serveShim } = await import("./serve.js");
      await serveShim(flags);
      return SERVING;
    }
    case "spare":
      // Resolves only if it never gets a pod; else it serves that pod.
      return (await import("./spare.js")).runSpare(flags);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    // start and delete exit at once (the spawned daemon is detached and
    // unref'd); the daemon lives on until Shutdown or a signal.
    if (code !== SERVING) process.exit(code);
  },
  (err: unknown) => {
    process.stderr.write(`${SHIM_NAME}: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
