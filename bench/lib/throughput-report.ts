// The io section's summaries, table and JSON (see bench/lib/throughput.ts).
// Same table layout as the cri section's (cri-report.ts).
import { entry, fmt, header, roundSummaries, rows, W, type Summaries } from "./cri-report.js";
import { IO_HANDLERS } from "./cri.js";
import { IO_KINDS, mbPerS, type IoKind, type IoSamples } from "./throughput.js";
import { round } from "./stats.js";

export interface IoResult {
  summaries: Summaries;
  /** median(hako) / median(runc) of each kind's MB/s. */
  ratioOfMedians: Record<IoKind, number>;
  /** Raw samples, and what the run was (containerd, kernel, network, sizes, volume file systems). */
  samples: IoSamples;
}

const LABELS: Record<IoKind, (s: IoSamples) => string> = {
  write: (s) => `volume write ${s.fileMiB} MiB (dd conv=fsync)`,
  read: (s) => `volume read ${s.fileMiB} MiB (dd, host-written)`,
  net: (s) => `TCP pod → host ${s.netMiB} MiB (wget POST)`,
  nc: (s) => `TCP pod → host ${s.ncMiB} MiB (dd | nc, 1 KiB writes)`,
};

export function summarizeIo(s: IoSamples): IoResult {
  const summaries: Summaries = {};
  const ratioOfMedians = {} as Record<IoKind, number>;
  for (const kind of IO_KINDS) {
    const hako = s.runs.hako.map((r) => mbPerS(r[kind]));
    const runc = s.runs.runc.map((r) => mbPerS(r[kind]));
    const label = LABELS[kind](s);
    summaries[`${kind}_hako`] = entry(`hako: ${label}`, "MB/s", hako);
    summaries[`${kind}_runc`] = entry(`runc: ${label}`, "MB/s", runc);
    const n = Math.min(hako.length, runc.length);
    summaries[`${kind}_ratio`] = entry(`  ratio hako / runc (paired)`, "x", [...Array(n).keys()].map((i) => hako[i]! / runc[i]!));
    ratioOfMedians[kind] = summaries[`${kind}_hako`]!.median / summaries[`${kind}_runc`]!.median;
  }
  // What the in-container timing leaves out, for the reader who compares with ExecSync wall times.
  for (const h of IO_HANDLERS) {
    summaries[`dd_spawn_${h}`] = entry(`${h}: empty dd in the container (subtracted above)`, "ms", s.runs[h].map((r) => r.read.spawnMs));
    summaries[`exec_overhead_${h}`] = entry(`${h}: ExecSync wall − timed dd (write; exec set-up)`, "ms", s.runs[h].map((r) => r.write.execMs - r.write.ms - r.write.spawnMs));
  }
  return { summaries, ratioOfMedians, samples: s };
}

export function ioTable(r: IoResult): string {
  const m = r.samples;
  const n = r.summaries.write_hako?.n ?? 0;
  const lines = [
    ...header(
      `== io: throughput of a hostPath volume (hako: ${m.volumeFs.hako}, runc: ${m.volumeFs.runc}) and of TCP to the host, ` +
        `containerd ${m.containerdVersion} (CRI, kernel ${m.kernel}, accel ${m.accel}), ${n} runs ==`,
    ),
    ...rows(r.summaries),
    "-".repeat(W + 36),
  ];
  for (const kind of IO_KINDS) {
    const hako = r.summaries[`${kind}_hako`]!.median;
    const runc = r.summaries[`${kind}_runc`]!.median;
    lines.push(`${LABELS[kind](r.samples)}, medians: hako ${fmt(hako, "MB/s")} MB/s / runc ${fmt(runc, "MB/s")} MB/s = ${fmt(r.ratioOfMedians[kind], "x")} (runc ÷ hako = ${fmt(1 / r.ratioOfMedians[kind], "x")})`);
  }
  return lines.join("\n");
}

/** The `io` key of the results JSON: summaries rounded, raw samples kept. */
export function ioJson(r: IoResult): unknown {
  // The run's description first, then the figures, then every transfer.
  const { runs, ...meta } = r.samples;
  return {
    ...meta,
    ratioOfMedians: Object.fromEntries(IO_KINDS.map((k) => [k, round(r.ratioOfMedians[k], 4)])),
    summary: roundSummaries(r.summaries),
    runs,
  };
}
