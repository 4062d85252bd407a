// Progress reporting for the guest image build: a cli-progress bar on a TTY,
// otherwise one plain line per step on stderr.
import cliProgress from 'cli-progress';

export interface ProgressEvent {
  step: string;
  index: number;
  total: number;
  detail?: string;
}

export type ProgressFn = (ev: ProgressEvent) => void;

/** Progress of a long sub-task (the kernel build): count of units and a label. */
export interface SubProgress {
  update(done: number, detail?: string): void;
  stop(): void;
}

export interface Reporter {
  step(ev: ProgressEvent): void;
  /** Starts a bar for a long-running sub-task (estimated total units). */
  sub(label: string, estimate: number): SubProgress;
  info(msg: string): void;
  stop(): void;
}

function fmtElapsed(ms: number): string {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

export function createReporter(stream: NodeJS.WriteStream = process.stderr): Reporter {
  const tty = Boolean(stream.isTTY);
  let bar: cliProgress.SingleBar | undefined;
  const stopBar = (): void => {
    if (bar) {
      bar.stop();
      bar = undefined;
    }
  };
  return {
    step(ev) {
      stopBar();
      stream.write(`[${ev.index}/${ev.total}] ${ev.step}${ev.detail ? `: ${ev.detail}` : ''}\n`);
    },
    sub(label, estimate) {
      const started = Date.now();
      if (tty) {
        stopBar();
        const b = new cliProgress.SingleBar(
          {
            stream,
            format: `  ${label} [{bar}] {percentage}% {value}/{total} {elapsed} {detail}`,
            hideCursor: true,
            clearOnComplete: false,
          },
          cliProgress.Presets.shades_classic,
        );
        b.start(estimate, 0, { elapsed: '0m00s', detail: '' });
        bar = b;
        return {
          update(done, detail) {
            b.setTotal(Math.max(estimate, done));
            b.update(done, { elapsed: fmtElapsed(Date.now() - started), detail: (detail ?? '').slice(0, 40) });
          },
          stop() {
            if (bar === b) stopBar();
          },
        };
      }
      // Non-TTY: a line every 10% (and at most every 30 s is fine for logs).
      let lastPct = -1;
      return {
        update(done) {
          const pct = Math.min(99, Math.floor((done * 100) / Math.max(1, estimate)));
          if (pct >= lastPct + 10) {
            lastPct = pct;
            stream.write(`  ${label}: ~${pct}% (${done} units, ${fmtElapsed(Date.now() - started)})\n`);
          }
        },
        stop() {
          stream.write(`  ${label}: done in ${fmtElapsed(Date.now() - started)}\n`);
        },
      };
    },
    info(msg) {
      stopBar();
      stream.write(`${msg}\n`);
    },
    stop: stopBar,
  };
}
