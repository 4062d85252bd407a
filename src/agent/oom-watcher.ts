// Notices OOM kills in containers' cgroups. The kernel bumps `oom_kill` in a
// cgroup v2 `memory.events` file and notifies inotify watchers of it, so one
// fs.watch per container is enough; the host collects the kills with the
// long-polling GetOOMEvent RPC (as Kata's agent does).
import { watch, readFileSync, type FSWatcher } from "node:fs";
import { join } from "node:path";

const MAX_QUEUED = 1024;

/** `oom_kill N` from a memory.events text; undefined if unreadable. */
export function oomKillCount(text: string): number | undefined {
  const m = /^oom_kill (\d+)$/m.exec(text);
  return m ? Number(m[1]) : undefined;
}

interface Watched {
  file: string;
  kills: number;
  seen: boolean;
  watcher: FSWatcher | undefined;
}

export class OomWatcher {
  private readonly watched = new Map<string, Watched>();
  private readonly queue: string[] = [];
  private readonly waiters: Array<(id: string) => void> = [];

  /** Starts watching a container's cgroup (which must exist). */
  watch(containerId: string, cgroupDir: string): void {
    this.unwatch(containerId);
    const file = join(cgroupDir, "memory.events");
    const w: Watched = { file, kills: this.read(file) ?? 0, seen: false, watcher: undefined };
    try {
      w.watcher = watch(file, () => this.check(containerId));
      w.watcher.on("error", () => undefined);
    } catch {
      // No memory controller for this cgroup: nothing to watch.
    }
    this.watched.set(containerId, w);
  }

  /** Reads the counter now (e.g. when the container's init exits); true if it rose. */
  check(containerId: string): boolean {
    const w = this.watched.get(containerId);
    if (!w) return false;
    const n = this.read(w.file);
    if (n === undefined || n <= w.kills) return false;
    w.kills = n;
    w.seen = true;
    this.emit(containerId);
    return true;
  }

  /** True if an OOM kill was seen in this container since watch(). */
  sawKill(containerId: string): boolean {
    return this.watched.get(containerId)?.seen ?? false;
  }

  unwatch(containerId: string): void {
    const w = this.watched.get(containerId);
    w?.watcher?.close();
    this.watched.delete(containerId);
  }

  /** The next container that had an OOM kill; waits for one. */
  next(signal?: AbortSignal): Promise<string> {
    const queued = this.queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const waiter = (id: string): void => {
        signal?.removeEventListener("abort", onAbort);
        resolve(id);
      };
      const onAbort = (): void => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(signal?.reason instanceof Error ? signal.reason : new Error("GetOOMEvent cancelled"));
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  private emit(containerId: string): void {
    const waiter = this.waiters.shift();
    if (waiter) return waiter(containerId);
    if (this.queue.length >= MAX_QUEUED) this.queue.shift();
    this.queue.push(containerId);
  }

  private read(file: string): number | undefined {
    try {
      return oomKillCount(readFileSync(file, "utf8"));
    } catch {
      return undefined;
    }
  }
}
