// Book-keeping of every process the benchmark starts, so that an interrupted
// run kills exactly those (by pid) and the final leak check can verify that
// none of them survived.

const live = new Map<number, string>();
const all = new Map<number, string>();
const cleanups = new Set<() => Promise<void>>();

export function track(pid: number | undefined, what: string): void {
  if (pid === undefined) return;
  live.set(pid, what);
  all.set(pid, what);
}

export function untrack(pid: number | undefined): void {
  if (pid !== undefined) live.delete(pid);
}

/** Every pid the benchmark started, with what it was. */
export function startedPids(): ReadonlyMap<number, string> {
  return all;
}

/** Async cleanups (e.g. an in-process sandbox's destroy) to run on interruption. */
export function onInterrupt(fn: () => Promise<void>): () => void {
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

/**
 * For a section that owns a daemon: on interruption, let the section wind
 * down (its current step finishes, at most `windDownMs`), then `stop()`.
 * Call the returned function when the section is over (it also unregisters).
 */
export function stopAfterWindDown(stop: () => Promise<void>, windDownMs: number): () => void {
  let done: () => void = () => undefined;
  const finished = new Promise<void>((r) => (done = r));
  const forget = onInterrupt(async () => {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([finished, new Promise<void>((r) => (timer = setTimeout(r, windDownMs)))]);
    clearTimeout(timer);
    await stop();
  });
  return () => {
    forget();
    done();
  };
}

/** Runs pending cleanups, then kills the still-live children by pid. */
export async function killAll(): Promise<void> {
  for (const fn of [...cleanups]) await fn().catch(() => undefined);
  cleanups.clear();
  for (const [pid, what] of live) {
    // `hako run` tears its VM down on SIGTERM; QEMU gets SIGKILL.
    try {
      process.kill(pid, what.startsWith("hako") ? "SIGTERM" : "SIGKILL");
    } catch {
      /* already gone */
    }
  }
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && [...live.keys()].some(alive)) await new Promise((r) => setTimeout(r, 100));
  for (const pid of live.keys()) {
    if (alive(pid)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* gone */
      }
    }
  }
  live.clear();
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
