// Container root filesystems from containerd: the snapshotter's mounts
// (overlay, bind) are mounted on <bundle>/rootfs on the host, as runc's shim
// does; the sandbox share then bind-mounts that into the VM.
import { existsSync, mkdirSync, realpathSync } from "node:fs";
import { join } from "node:path";
import { mount, mountsUnder, unmountAllUnder } from "../mounts.js";

export interface RootfsMount {
  type: string;
  source: string;
  options: string[];
}

/** Mounts the snapshot on <bundle>/rootfs; returns false when there is nothing to mount (spec root used as is). */
export async function mountRootfs(id: string, bundle: string, mounts: RootfsMount[]): Promise<boolean> {
  if (mounts.length === 0) return false;
  const target = join(bundle, "rootfs");
  if (!existsSync(target)) mkdirSync(target, { recursive: true });
  for (const m of mounts) {
    const isBind = m.type === "bind" || m.options.includes("bind") || m.options.includes("rbind");
    const opts = isBind ? m.options.filter((o) => o !== "bind" && o !== "rbind") : m.options;
    if (isBind) await mount(id, "none", m.source, target, ["bind", ...opts]);
    else await mount(id, m.type, m.source, target, opts);
  }
  return true;
}

/** Unmounts <bundle>/rootfs (stacked mounts too); a no-op when nothing is mounted there. */
export async function unmountRootfs(id: string, bundle: string): Promise<void> {
  let target = join(bundle, "rootfs");
  try {
    // mountinfo holds resolved paths; the bundle path may run through a symlink.
    target = realpathSync(target);
  } catch {
    return; // no rootfs directory: nothing can be mounted there
  }
  if (mountsUnder(target).length > 0) await unmountAllUnder(id, target);
}
