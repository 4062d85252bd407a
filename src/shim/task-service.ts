// containerd.task.v2.Task over ttRPC → ShimRuntime. Errors leave as
// HakoError codes (NotFound, AlreadyExists, FailedPrecondition, ...), which
// the ttRPC server maps to wire statuses.
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Task } from "../protocols/gen/containerd/runtime/task/v2/shim_pb.js";
import { Status } from "../protocols/gen/containerd/types/task_pb.js";
import type { ServiceImpl } from "../protocols/ttrpc/server.js";
import { Code } from "../protocols/ttrpc/status.js";
import { RuntimeError } from "../runtime/errors.js";
import type { Logger } from "../runtime/logger.js";
import { toMetricsV1 } from "./metrics.js";
import type { ShimRuntime, TaskStatus } from "./shim-runtime.js";

export const SHIM_VERSION = "hako-shim 0.1.0";
const EXEC_SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process";

const STATUS: Record<TaskStatus, Status> = {
  created: Status.CREATED,
  running: Status.RUNNING,
  paused: Status.PAUSED,
  stopped: Status.STOPPED,
};

export function taskService(rt: ShimRuntime, log: Logger, onShutdown: () => void): ServiceImpl<typeof Task> {
  return {
    async state(req) {
      const s = rt.state(req.id, req.execId);
      return {
        id: req.id,
        execId: req.execId,
        bundle: s.bundle,
        pid: s.pid,
        status: STATUS[s.status],
        stdin: s.stdio.stdin,
        stdout: s.stdio.stdout,
        stderr: s.stdio.stderr,
        terminal: s.stdio.terminal,
        exitStatus: s.exitStatus,
        exitedAt: timestampFromDate(s.exitedAt ?? new Date(0)),
      };
    },
    async create(req, ctx) {
      if (req.checkpoint) throw new RuntimeError(Code.UNIMPLEMENTED, req.id, "restoring from a checkpoint is not supported by hako");
      // ctx.signal: containerd's deadline for this Create (ttRPC timeout_nano) or its connection
      // closing; a sandbox still waiting for a start slot or its VM then gives up and cleans up.
      const pid = await rt.create(
        {
          id: req.id,
          bundle: req.bundle,
          rootfs: req.rootfs.map((m) => ({ type: m.type, source: m.source, options: m.options })),
          stdio: { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal },
        },
        ctx.signal,
      );
      return { pid };
    },
    async start(req) {
      return { pid: await rt.start(req.id, req.execId) };
    },
    async delete(req) {
      const r = await rt.delete(req.id, req.execId);
      return { pid: r.pid, exitStatus: r.exitStatus, exitedAt: timestampFromDate(r.exitedAt) };
    },
    async pids(req) {
      const pids = await rt.pids(req.id);
      return { processes: pids.map((pid) => ({ pid })) };
    },
    async pause(req) {
      await rt.pause(req.id);
      return {};
    },
    async resume(req) {
      await rt.resume(req.id);
      return {};
    },
    checkpoint(req) {
      throw new RuntimeError(Code.UNIMPLEMENTED, req.id, "checkpoint is not supported by hako");
    },
    async kill(req) {
      await rt.kill(req.id, req.execId, req.signal, req.all);
      return {};
    },
    async exec(req) {
      if (!req.spec || req.spec.typeUrl !== EXEC_SPEC_TYPE)
        throw new RuntimeError(Code.INVALID_ARGUMENT, req.id, `exec ${req.execId}: spec must be ${EXEC_SPEC_TYPE}, got ${req.spec?.typeUrl ?? "none"}`);
      const processJson = Buffer.from(req.spec.value).toString("utf8");
      rt.exec(req.id, req.execId, { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal }, processJson);
      return {};
    },
    async resizePty(req) {
      await rt.resizePty(req.id, req.execId, req.width, req.height);
      return {};
    },
    async closeIO(req) {
      await rt.closeIO(req.id, req.execId, req.stdin);
      return {};
    },
    update(req) {
      throw new RuntimeError(Code.UNIMPLEMENTED, req.id, "updating resources of a running task is not supported by hako yet");
    },
    async wait(req) {
      const r = await rt.wait(req.id, req.execId);
      return { exitStatus: r.exitStatus, exitedAt: timestampFromDate(r.exitedAt) };
    },
    async stats(req) {
      return { stats: toMetricsV1(await rt.stats(req.id)) };
    },
    async connect(req) {
      return { shimPid: process.pid, taskPid: rt.connectInfo(req.id).taskPid, version: SHIM_VERSION };
    },
    async shutdown() {
      if (rt.isEmpty) {
        log.info("shutdown: no tasks left");
        setImmediate(onShutdown);
      }
      return {};
    },
  };
}
