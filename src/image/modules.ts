// Kernel modules the generic (Debian) kernel needs in the guest: virtio transports and
// devices, 9p, overlay, erofs. Computed with modprobe --show-depends against the extracted
// package, copied into the staging tree with a load-order list for the guest's rc.sh.
import { copyFile, mkdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { run, runRaw } from './exec.js';

export const GUEST_MODULES = [
  'virtio_mmio',
  'virtio_pci',
  'virtio_console',
  '9pnet_virtio',
  '9p',
  'virtio_blk',
  'virtio_net',
  'virtio_rng',
  'virtio_balloon',
  'overlay',
  'erofs',
] as const;

export const MODULES_LIST_NAME = 'hako-modules.list';

/**
 * Parses concatenated `modprobe --show-depends` outputs into an ordered, de-duplicated list of
 * module paths relative to the module root (`/lib/modules/...`). `builtin` lines are skipped.
 * `root` is the directory prefix modprobe -d added, which is stripped.
 */
export function parseShowDepends(output: string, root = ''): string[] {
  const seen = new Set<string>();
  const list: string[] = [];
  const prefix = root.replace(/\/+$/, '');
  for (const raw of output.split('\n')) {
    const line = raw.trim();
    const m = /^insmod\s+(\S+)/.exec(line);
    if (!m) continue;
    let p = m[1]!;
    if (prefix && p.startsWith(`${prefix}/`)) p = p.slice(prefix.length);
    if (!p.startsWith('/')) p = `/${p}`;
    if (seen.has(p)) continue;
    seen.add(p);
    list.push(p);
  }
  return list;
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** Ordered module paths (guest absolute, e.g. /lib/modules/<kver>/kernel/...ko) for `mods`. */
export async function resolveModules(kernelRoot: string, release: string, mods: readonly string[] = GUEST_MODULES): Promise<string[]> {
  const modDir = path.join(kernelRoot, 'lib', 'modules', release);
  if (!(await exists(path.join(modDir, 'modules.dep')))) {
    await run('depmod', ['-b', kernelRoot, release], {
      what: `depmod -b ${kernelRoot} ${release}`,
      hint: 'install kmod (apt-get install kmod)',
    });
  }
  let all = '';
  for (const mod of mods) {
    const r = await runRaw('modprobe', ['-S', release, '-d', kernelRoot, '--show-depends', mod]);
    if (r.code !== 0) {
      throw new Error(
        `modprobe --show-depends ${mod} for ${release} failed: ${r.stderr.trim()}; ` +
          `delete ${kernelRoot} to re-extract the kernel package, and check that kmod is installed`,
      );
    }
    all += r.stdout.toString('utf8');
  }
  return parseShowDepends(all, kernelRoot);
}

/** Renders the guest's hako-modules.list: one insmod path per line, in load order. */
export function renderModulesList(paths: readonly string[]): string {
  return paths.map((p) => `${p}\n`).join('');
}

/** Copies the modules into `stage` at the same paths and writes the load-order list. */
export async function stageModules(kernelRoot: string, release: string, stage: string): Promise<string[]> {
  const paths = await resolveModules(kernelRoot, release);
  for (const p of paths) {
    const dst = path.join(stage, p);
    await mkdir(path.dirname(dst), { recursive: true });
    await copyFile(path.join(kernelRoot, p), dst);
  }
  const dir = path.join(stage, 'lib', 'modules', release);
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, MODULES_LIST_NAME), renderModulesList(paths));
  return paths;
}
