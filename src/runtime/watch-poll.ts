// Waiting for a file another process writes (crun's pid file, containerd's
// CRI log), woken by inotify on its directory instead of a tight poll, with
// a slow poll as a safety net (no inotify, a missed event).
import { watch, type FSWatcher } from "node:fs";

/**
 * Runs `check` until it returns something other than undefined, and
 * resolves with that: at once again after any change in `dir` or when
 * `wakeOn` settles, else every `pollMs`. A change while `check` runs is not
 * lost. `check` decides when to give up (by returning a value or throwing).
 */
export async function untilSeen<T>(dir: string, check: () => T | undefined | Promise<T | undefined>, pollMs: number, wakeOn?: Promise<unknown>): Promise<T> {
  let wake: (() => void) | undefined;
  let changed = false;
  const poke = (): void => {
    changed = true;
    wake?.();
  };
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dir, poke);
    watcher.on("error", () => undefined);
  } catch {
    /* no inotify here: the poll still finds it */
  }
  void wakeOn?.then(poke, poke);
  try {
    for (;;) {
      changed = false;
      const seen = await check();
      if (seen !== undefined) return seen;
      if (changed) continue; // changed while it was checked
      await new Promise<void>((r) => {
        const timer = setTimeout(r, pollMs);
        wake = () => {
          clearTimeout(timer);
          r();
        };
      });
      wake = undefined;
    }
  } finally {
    watcher?.close();
  }
}
