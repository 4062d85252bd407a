// Container statistics read in the guest (cgroup v2) translated into the
// type containerd's CRI decodes from a shim: io.containerd.cgroups.v1.Metrics
// (this host's containerd runs with cgroup v1 metrics).
import { create, toBinary } from "@bufbuild/protobuf";
import { MetricsSchema } from "../protocols/gen/containerd/cgroups/v1/metrics_pb.js";
import type { StatsContainerResponse } from "../protocols/gen/hako/agent/v1/agent_pb.js";

export type CgroupStatsLike = Pick<StatsContainerResponse, "cpu" | "memory" | "pids" | "processIds">;

export const METRICS_V1_TYPE_URL = "io.containerd.cgroups.v1.Metrics";

export function toMetricsV1(s: CgroupStatsLike): { typeUrl: string; value: Uint8Array } {
  const m = s.memory;
  const c = s.cpu;
  const metrics = create(MetricsSchema, {
    pids: { current: s.pids?.current ?? 0n, limit: s.pids?.limit ?? 0n },
    cpu: {
      usage: { total: (c?.usageUsec ?? 0n) * 1000n, user: (c?.userUsec ?? 0n) * 1000n, kernel: (c?.systemUsec ?? 0n) * 1000n },
      throttling: { throttledPeriods: c?.throttledPeriods ?? 0n, throttledTime: (c?.throttledUsec ?? 0n) * 1000n },
    },
    memory: {
      cache: m?.file ?? 0n,
      rss: m?.anon ?? 0n,
      totalCache: m?.file ?? 0n,
      totalRss: m?.anon ?? 0n,
      inactiveFile: m?.inactiveFile ?? 0n,
      totalInactiveFile: m?.inactiveFile ?? 0n,
      activeFile: m?.activeFile ?? 0n,
      totalActiveFile: m?.activeFile ?? 0n,
      usage: { usage: m?.usage ?? 0n, max: m?.maxUsage ?? 0n, limit: m?.limit ?? 0n, failcnt: m?.oomKill ?? 0n },
    },
  });
  return { typeUrl: METRICS_V1_TYPE_URL, value: toBinary(MetricsSchema, metrics) };
}
