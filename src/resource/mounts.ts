// Host mount helpers. Teardown unmounts everything below a directory before
// anything is removed, so a bind-mounted user rootfs is never deleted.
import { readFileSync, rmSync, existsSync } from "node:fs";
import { ResourceError } from "../runtime/errors.js";
import { commandErrorText, execFileAsync as run } from "../runtime/command.js";


function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
}

/**
 * Mount points at or below `dir`, deepest first. A point with stacked mounts
 * appears once per mount, so unmounting each entry once clears the stack.
 */
export function mountsUnder(dir: string): string[] {
  let text = "";
  try {
    text = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return [];
  }
  const prefix = dir.endsWith("/") ? dir : `${dir}/`;
  return text
    .split("\n")
    .map((l) => unescapeMountPath(l.split(" ")[4] ?? ""))
    .filter((p) => p === dir || p.startsWith(prefix))
    .sort((a, b) => b.split("/").length - a.split("/").length || b.length - a.length);
}

export async function bindMount(id: string, source: string, target: string, readonly = false): Promise<void> {
  try {
    await run("mount", ["--bind", source, target]);
    if (readonly) await run("mount", ["-o", "remount,bind,ro", target]);
  } catch (err) {
    throw new ResourceError(id, `bind mount of ${source} on ${target} failed: ${commandErrorText(err)}`);
  }
}

export async function mount(id: string, type: string, source: string, target: string, options: string[]): Promise<void> {
  try {
    await run("mount", ["-t", type, ...(options.length ? ["-o", options.join(",")] : []), source, target]);
  } catch (err) {
    throw new ResourceError(id, `mount -t ${type} ${source} on ${target} failed: ${commandErrorText(err)}`);
  }
}

export async function unmountAllUnder(id: string, dir: string): Promise<void> {
  for (const m of mountsUnder(dir)) {
    await run("umount", [m]).catch(() => run("umount", ["-l", m]).catch(() => undefined));
  }
  const left = mountsUnder(dir);
  if (left.length > 0) throw new ResourceError(id, `mounts remain under ${dir}: ${left.join(", ")}`, { hint: "unmount them by hand, then run `hako delete -f`" });
}

/** Unmounts everything below `dir`, then removes it. Refuses to remove while mounts remain. */
export async function removeTree(id: string, dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  await unmountAllUnder(id, dir);
  rmSync(dir, { recursive: true, force: true });
}
