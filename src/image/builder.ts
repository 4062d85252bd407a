// Guest image builder: kernels (Debian generic and/or minimal), the rootfs staging tree,
// initrd or erofs, and manifest.json.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { runRaw } from './exec.js';
import { fetchDebianKernel, resolveKernelPackage, type DebianKernel } from './debian-kernel.js';
import { ensureMinimalKernel, linuxSourceVersion, minimalKernelKey, MINIMAL_FRAGMENT } from './minimal-kernel.js';
import { extractVmlinux, writeKernelImage } from './vmlinux-extract.js';
import { AGENT_SH, INIT_SH, INITTAB, RC_SH, buildStagingTree, stageNodeImageTree } from './rootfs-tree.js';
import { HELPER_SH } from '../agent/helper-shell.js';
import { buildInitrd } from './initrd.js';
import { GUEST_MODULES } from './modules.js';
import { buildErofs } from './erofs.js';
import {
  inputsHash,
  readManifest,
  writeManifest,
  type GuestManifest,
  type ImageInputs,
  type KernelFlavor,
  type RootfsFormat,
} from './manifest.js';
import { createReporter, type ProgressFn, type Reporter } from './progress.js';

export type { GuestManifest } from './manifest.js';

export interface BuildGuestImageOptions {
  outDir: string;
  /** Default /var/cache/hako. */
  cacheDir?: string;
  kernels: KernelFlavor[];
  rootfsFormat: RootfsFormat;
  agentBundle: string;
  nodePtyDir: string;
  force?: boolean;
  progress?: ProgressFn;
  /** Where plain messages go (default: a reporter on stderr). */
  reporter?: Reporter;
}

export const DEFAULT_CACHE_DIR = '/var/cache/hako';
// 3: node stripped in the guest. 4: node on its own image beside the initrd. 6: crun on that image too.
const LAYOUT_VERSION = '6';
export const OUT_NAMES = {
  generic: 'vmlinux-generic',
  minimal: 'vmlinux-minimal',
  initrd: 'hako-rootfs.initrd',
  erofs: 'hako-rootfs.erofs',
  nodeImage: 'hako-node.erofs',
  manifest: 'manifest.json',
} as const;

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function sha256Dir(dir: string, rel: string[]): Promise<string> {
  const h = createHash('sha256');
  const walk = async (p: string): Promise<void> => {
    const st = await stat(p).catch(() => undefined);
    if (!st) return;
    if (st.isDirectory()) {
      for (const e of (await readdir(p)).sort()) await walk(path.join(p, e));
    } else {
      h.update(`${path.relative(dir, p)}\0${st.size}\0`);
      h.update(await readFile(p));
    }
  };
  for (const r of rel) await walk(path.join(dir, r));
  return h.digest('hex');
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

async function which(cmd: string, hint: string): Promise<string> {
  for (const d of ['/usr/sbin', '/usr/bin', '/sbin', '/bin']) {
    const p = path.join(d, cmd);
    if (await exists(p)) return p;
  }
  throw new Error(`${cmd} not found; ${hint}`);
}

async function firstLine(cmd: string, args: string[]): Promise<string> {
  const r = await runRaw(cmd, args);
  return (r.stdout.toString() + r.stderr).split('\n')[0]!.trim();
}

export async function buildGuestImage(opts: BuildGuestImageOptions): Promise<GuestManifest> {
  const cacheDir = opts.cacheDir ?? DEFAULT_CACHE_DIR;
  const outDir = path.resolve(opts.outDir);
  const reporter = opts.reporter ?? createReporter();
  const kernels = [...new Set(opts.kernels)];
  if (kernels.length === 0) throw new Error('no kernel selected: pass generic, minimal or both');
  for (const f of [opts.agentBundle, path.join(opts.nodePtyDir, 'package.json')]) {
    if (!(await exists(f))) throw new Error(`${f} does not exist; build the agent bundle / install node-pty first`);
  }

  const total = 4 + kernels.length;
  let index = 0;
  const step = (name: string, detail?: string): void => {
    const ev = { step: name, index: ++index, total, ...(detail !== undefined ? { detail } : {}) };
    opts.progress?.(ev);
    reporter.step(ev);
  };

  // 1. Inputs.
  step('checking inputs');
  const crunBinary = await which('crun', 'apt-get install crun');
  const busyboxBinary = '/bin/busybox';
  const nodeSt = await stat(process.execPath);
  const crunVersion = (await firstLine(crunBinary, ['--version'])).replace(/^crun version\s*/, '');
  const busyboxVersion = await firstLine(busyboxBinary, ['--help']);
  let debPkg: { pkg: string; version: string } | undefined;
  if (kernels.includes('generic')) debPkg = await resolveKernelPackage();
  let minimalKey: string | undefined;
  if (kernels.includes('minimal')) {
    minimalKey = minimalKernelKey(await readFile(MINIMAL_FRAGMENT, 'utf8'), await linuxSourceVersion());
  }
  const inputs: ImageInputs = {
    agentHash: await sha256File(opts.agentBundle),
    node: { path: process.execPath, size: nodeSt.size, mtimeMs: nodeSt.mtimeMs, version: process.version },
    crunVersion,
    busyboxVersion,
    genericKernel: debPkg ? `${debPkg.pkg}=${debPkg.version}` : undefined,
    minimalKernelKey: minimalKey,
    kernels,
    rootfsFormat: opts.rootfsFormat,
    nodePtyHash: await sha256Dir(opts.nodePtyDir, ['package.json', 'lib', 'build/Release/pty.node']),
    layoutVersion: `${LAYOUT_VERSION}:${createHash('sha256').update(INIT_SH + RC_SH + AGENT_SH + HELPER_SH + INITTAB + GUEST_MODULES.join(',')).digest('hex').slice(0, 12)}`,
  };
  const hash = inputsHash(inputs);
  const manifestPath = path.join(outDir, OUT_NAMES.manifest);
  const old = await readManifest(manifestPath);
  if (!opts.force && old && old.inputsHash === hash) {
    const outputs = [
      ...Object.values(old.kernels).map((k) => k.path),
      ...Object.values(old.rootfs),
      ...(old.nodeImage ? [old.nodeImage] : []),
    ];
    const allThere = (await Promise.all(outputs.map(exists))).every(Boolean);
    if (allThere) {
      reporter.info('guest image up to date');
      return old;
    }
  }
  await mkdir(outDir, { recursive: true });
  const manifest: GuestManifest = {
    kernels: {},
    rootfs: {},
    inputsHash: hash,
    builtAt: new Date().toISOString(),
    node: process.version,
    crun: crunVersion,
  };

  // 2. Kernels.
  let deb: DebianKernel | undefined;
  if (debPkg) {
    step('generic kernel', `${debPkg.pkg} ${debPkg.version}`);
    deb = await fetchDebianKernel(cacheDir, debPkg.pkg, debPkg.version);
    const out = path.join(outDir, OUT_NAMES.generic);
    await extractVmlinux(deb.vmlinuz, out);
    manifest.kernels.generic = { path: out, release: deb.release };
  }
  if (kernels.includes('minimal')) {
    step('minimal kernel', `key ${minimalKey}`);
    const mk = await ensureMinimalKernel(cacheDir, reporter);
    const out = path.join(outDir, OUT_NAMES.minimal);
    await writeKernelImage(await readFile(mk.vmlinux), out);
    manifest.kernels.minimal = { path: out, release: mk.release };
  }

  // 3. Staging tree.
  step('staging rootfs tree');
  const stage = path.join(cacheDir, `stage-${process.pid}`);
  try {
    await buildStagingTree({
      dir: stage,
      agentBundle: opts.agentBundle,
      nodePtyDir: opts.nodePtyDir,
      nodeBinary: process.execPath,
      crunBinary,
      busyboxBinary,
      ...(deb ? { modules: { kernelRoot: deb.root, release: deb.release } } : {}),
      // With the initrd (a tmpfs root: all of it guest RAM), node gets its own image; crun goes there
      // too, on a read-only filesystem (stageNodeImageTree).
      nodeAndCrunOnImage: opts.rootfsFormat === 'initrd',
    });

    // 4. Rootfs image.
    if (opts.rootfsFormat === 'initrd') {
      step('rootfs initrd', 'cpio newc, uncompressed; node and crun on their own erofs image');
      const out = path.join(outDir, OUT_NAMES.initrd);
      await buildInitrd(stage, out);
      manifest.rootfs.initrd = out;
      const nodeStage = `${stage}-node`;
      try {
        await stageNodeImageTree(nodeStage, process.execPath, crunBinary);
        const nodeOut = path.join(outDir, OUT_NAMES.nodeImage);
        await buildErofs(nodeStage, nodeOut);
        manifest.nodeImage = nodeOut;
      } finally {
        await rm(nodeStage, { recursive: true, force: true });
      }
    } else {
      step('rootfs erofs', 'mkfs.erofs');
      if (deb) {
        reporter.info(
          '  note: the generic kernel cannot boot the erofs rootfs directly (virtio_blk and erofs are modules; ' +
            'a loader initrd is not implemented): use the minimal kernel with erofs, or --rootfs initrd',
        );
      }
      const out = path.join(outDir, OUT_NAMES.erofs);
      await buildErofs(stage, out);
      manifest.rootfs.erofs = out;
    }
  } finally {
    await rm(stage, { recursive: true, force: true });
  }

  step('writing manifest');
  await writeManifest(manifestPath, manifest);
  return manifest;
}
