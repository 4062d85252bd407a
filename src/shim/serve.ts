// The shim daemon: serves containerd.task.v2.Task for one group (a pod, or a
// single container) on its unix socket, publishes task events to containerd,
// and exits on Shutdown once no task is left.
import { chmodSync, mkdirSync, rmSync } from "node:fs";
import { dirname } from "node:path";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Task } from "../protocols/gen/containerd/runtime/task/v2/shim_pb.js";
import {
  TaskCreateSchema,
  TaskDeleteSchema,
  TaskExecAddedSchema,
  TaskExecStartedSchema,
  TaskExitSchema,
  TaskPausedSchema,
  TaskResumedSchema, TaskOOMSchema,
  TaskStartSchema,
} from "../protocols/gen/containerd/events/task_pb.js";
import { TtrpcServer } from "../protocols/ttrpc/server.js";
import { loadConfig } from "../runtime/config.js";
import { createLogger } from "../runtime/logger.js";
import { shimSocketAddress, socketPathOf } from "./address.js";
import { EventPublisher, TaskTopic } from "./events.js";
import type { ShimFlags } from "./flags.js";
import { daemonExecArgv, decodeRuntimeOptions, readStdinBytes } from "./start.js";
import { spawnSpare } from "./spare.js";
import { ShimRuntime, type TaskEvents } from "./shim-runtime.js";
import { taskService } from "./task-service.js";

/**
 * The runtime options containerd gave the pod's `start`: a spare has them
 * from its claimer's request; a daemon the launcher spawned
 * (src/shim/start-fast-path.sh) on its stdin. Their ConfigPath selects the
 * configuration, as start.ts does for the daemons it spawns itself.
 */
async function adoptRuntimeOptions(given: Uint8Array | undefined): Promise<void> {
  let bytes = given;
  if (bytes === undefined) {
    if (process.env.HAKO_SHIM_OPTIONS_ON_STDIN !== "1") return;
    bytes = readStdinBytes();
  }
  delete process.env.HAKO_SHIM_OPTIONS_ON_STDIN;
  const opts = await decodeRuntimeOptions(bytes);
  if (opts !== undefined && opts.configPath !== "") process.env.HAKO_CONFIG = opts.configPath;
}

export interface ServeOptions {
  /** containerd's runtime options (protobuf Any), when not on stdin. */
  runtimeOptions?: Uint8Array;
  /** Where the logs go (the bundle's `log` fifo); default stderr. */
  logFd?: number;
}

export async function serveShim(flags: ShimFlags, options: ServeOptions = {}): Promise<void> {
  // The environment containerd gave this shim, for the spare it leaves.
  const containerdEnv = { ...process.env };
  delete containerdEnv.HAKO_SHIM_OPTIONS_ON_STDIN;
  await adoptRuntimeOptions(options.runtimeOptions);
  const cfg = loadConfig();
  // stderr is containerd's non-blocking `log` fifo: write asynchronously, never spin on EAGAIN.
  const log = createLogger("containerd-shim-hako-v2", {
    level: flags.debug ? "debug" : cfg.runtime.log_level,
    sync: false,
    ...(options.logFd === undefined ? {} : { destination: options.logFd }),
  }).child({ namespace: flags.namespace, group: flags.id });
  const publisher = new EventPublisher({ logger: log });
  const ns = flags.namespace;
  const events: TaskEvents = {
    create: (e) =>
      publisher.publish(ns, TaskTopic.create, TaskCreateSchema, {
        containerId: e.containerId,
        bundle: e.bundle,
        rootfs: e.rootfs.map((m) => ({ type: m.type, source: m.source, options: m.options })),
        io: { stdin: e.io.stdin, stdout: e.io.stdout, stderr: e.io.stderr, terminal: e.io.terminal },
        pid: e.pid,
      }),
    start: (e) => publisher.publish(ns, TaskTopic.start, TaskStartSchema, e),
    exit: (e) => publisher.publish(ns, TaskTopic.exit, TaskExitSchema, { ...e, exitedAt: timestampFromDate(e.exitedAt) }),
    delete: (e) => publisher.publish(ns, TaskTopic.delete, TaskDeleteSchema, { ...e, exitedAt: timestampFromDate(e.exitedAt) }),
    execAdded: (e) => publisher.publish(ns, TaskTopic.execAdded, TaskExecAddedSchema, e),
    execStarted: (e) => publisher.publish(ns, TaskTopic.execStarted, TaskExecStartedSchema, e),
    paused: (containerId) => publisher.publish(ns, TaskTopic.paused, TaskPausedSchema, { containerId }),
    resumed: (containerId) => publisher.publish(ns, TaskTopic.resumed, TaskResumedSchema, { containerId }),
    oom: (containerId) => publisher.publish(ns, TaskTopic.oom, TaskOOMSchema, { containerId }),
  };
  const rt = new ShimRuntime(cfg, log, events);
  const server = new TtrpcServer({ logger: log });
  const socketPath = socketPathOf(flags.socket || shimSocketAddress(flags.address, flags.namespace, flags.id));
  mkdirSync(dirname(socketPath), { recursive: true, mode: 0o711 });

  let spareTimer: NodeJS.Timeout | undefined;
  let spared = false;
  const leaveSpare = (): void => {
    clearTimeout(spareTimer);
    if (spared) return;
    spared = true;
    spawnSpare(flags, cfg.runtime.shim_spares, containerdEnv, daemonExecArgv(), log);
  };
  let stopping = false;
  const stop = async (reason: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    if (reason === "shutdown") leaveSpare();
    log.info({ reason }, "shim exiting");
    await rt.destroyAll().catch((err: unknown) => log.error({ err }, "teardown failed"));
    await publisher.close(2000).catch(() => undefined);
    await server.close().catch(() => undefined);
    rmSync(socketPath, { force: true });
    process.exit(0);
  };
  server.register(Task, taskService(rt, log, () => void stop("shutdown")));
  for (const sig of ["SIGTERM", "SIGINT"] as const) process.on(sig, () => void stop(sig));
  process.on("SIGPIPE", () => undefined);
  process.on("uncaughtException", (err) => log.error({ err }, "uncaught exception"));
  await server.listen(socketPath);
  chmodSync(socketPath, 0o600);
  log.info({ socket: socketPath, pid: process.pid }, "shim serving");
  // The spare starts once this pod's own start has had the CPU (a warm pod
  // starts in ~0.5 s), or when this shim exits if that comes first: node's
  // start-up would compete with the pod's on a small host.
  spareTimer = setTimeout(leaveSpare, SPARE_DELAY_MS);
  spareTimer.unref();
}

/** How long after it starts serving a shim starts the spare for the next pod. */
const SPARE_DELAY_MS = 1000;
