// Notices OOM kills in containers' cgroups. The kernel bumps `oom_kill` in a
// cgroup v2 `memory.events` file and notifies inotify watchers of it, so one
// fs.watch per container is enough; the host collects the kills with the
// long-polling GetOOMEvent RPC (as Kata's agent does).
//
// A container whose init is killed can lose that race: `crun run` removes the
// container's cgroup as soon as its init is gone (crun's libcrun_container_run
// deletes the container unless detached), often before the inotify event is
// read. The parent cgroup's memory.events stays, and its oom_kill counts the
// kills of every container below it. So the watcher keeps, per parent, how
// many kills it has put down to a container; when a container's init exits,
// a parent count above that is this container's (the other containers' own
// counters are read first, while their cgroups exist).
import { watch, readFileSync, type FSWatcher } from "node:fs";
import { dirname, join } from "node:path";

const MAX_QUEUED = 1024;

/** `oom_kill N` from a memory.events text; undefined if unreadable. */
export function oomKillCount(text: string): number | undefined {
  const m = /^oom_kill (\d+)$/m.exec(text);
  return m ? Number(m[1]) : undefined;
}

interface Watched {
  file: string;
  parent: Parent;
  /** Kills put down to this container (counted from 0: its cgroup is its own). */
  kills: number;
  watcher: FSWatcher | undefined;
}

/** A parent cgroup: its count when first seen, and the kills put down to containers since. */
interface Parent {
  file: string;
  base: number;
  attributed: number;
}

export class OomWatcher {
  private readonly watched = new Map<string, Watched>();
  private readonly parents = new Map<string, Parent>();
  private readonly queue: string[] = [];
  private readonly waiters: Array<(id: string) => void> = [];

  /**
   * Notes the parent cgroup's count before a container under it can run (at
   * create): kills counted there later are the containers'.
   */
  prepare(cgroupDir: string): void {
    this.parentOf(cgroupDir);
  }

  /**
   * Starts watching a container's cgroup; a second call for the same
   * container keeps the first watch. The cgroup is the container's own, made
   * by crun for it, so its counter started at 0: a kill counted before the
   * watch began (the process can outrun the agent's look at its pid file)
   * is this container's and is reported at once.
   */
  watch(containerId: string, cgroupDir: string): void {
    if (this.watched.has(containerId)) return;
    const file = join(cgroupDir, "memory.events");
    const w: Watched = { file, parent: this.parentOf(cgroupDir), kills: 0, watcher: undefined };
    try {
      w.watcher = watch(file, () => this.check(containerId));
      w.watcher.on("error", () => undefined);
    } catch {
      // No memory controller for this cgroup, or it is gone: nothing to watch.
    }
    this.watched.set(containerId, w);
    this.check(containerId);
  }

  /** Reads the container's counter now; true if it rose. */
  check(containerId: string): boolean {
    const w = this.watched.get(containerId);
    if (!w) return false;
    const n = this.read(w.file);
    if (n === undefined || n <= w.kills) return false;
    this.record(containerId, w, n - w.kills);
    return true;
  }

  /**
   * The container's init has exited: its own counter if its cgroup is still
   * there, else the kills its parent counted that no container accounts for.
   * True if it had a kill.
   */
  settleExit(containerId: string): boolean {
    const w = this.watched.get(containerId);
    if (!w) return false;
    this.check(containerId);
    for (const [id, other] of this.watched) if (other !== w && other.parent === w.parent) this.check(id);
    const total = this.read(w.parent.file);
    const unclaimed = total === undefined ? 0 : total - w.parent.base - w.parent.attributed;
    if (unclaimed > 0) this.record(containerId, w, unclaimed);
    return w.kills > 0;
  }

  private record(containerId: string, w: Watched, kills: number): void {
    w.kills += kills;
    w.parent.attributed += kills;
    this.emit(containerId);
  }

  private parentOf(cgroupDir: string): Parent {
    const file = join(dirname(cgroupDir), "memory.events");
    let p = this.parents.get(file);
    if (!p) {
      // Not there yet: crun makes it with the first container, from zero.
      p = { file, base: this.read(file) ?? 0, attributed: 0 };
      this.parents.set(file, p);
    }
    return p;
  }

  /** True if an OOM kill was seen in this container since watch(). */
  sawKill(containerId: string): boolean {
    return (this.watched.get(containerId)?.kills ?? 0) > 0;
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
