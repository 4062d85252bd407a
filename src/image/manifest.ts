// manifest.json of a built guest image, and the inputs hash that makes rebuilds idempotent.
import { createHash } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';

export type KernelFlavor = 'generic' | 'minimal';
export type RootfsFormat = 'initrd' | 'erofs';

export interface GuestManifest {
  kernels: Partial<Record<KernelFlavor, { path: string; release: string }>>;
  rootfs: Partial<Record<RootfsFormat, string>>;
  /** node on its own erofs image (with the initrd rootfs), mounted by the guest from virtio-blk. */
  nodeImage?: string;
  inputsHash: string;
  builtAt: string;
  node: string;
  crun: string;
}

export interface ImageInputs {
  /** sha256 of the agent bundle contents. */
  agentHash: string;
  node: { path: string; size: number; mtimeMs: number; version: string };
  crunVersion: string;
  busyboxVersion: string;
  /** Debian package version of the generic kernel (absent when not built). */
  genericKernel?: string;
  /** Minimal kernel cache key (fragment + linux-source version), absent when not built. */
  minimalKernelKey?: string;
  kernels: KernelFlavor[];
  rootfsFormat: RootfsFormat;
  nodePtyHash: string;
  /** Version of the builder's own layout (bump when the tree or scripts change). */
  layoutVersion: string;
}

/** Canonical JSON: object keys sorted recursively, so the hash ignores key order. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

export function inputsHash(inputs: ImageInputs): string {
  const norm: ImageInputs = { ...inputs, kernels: [...new Set(inputs.kernels)].sort() };
  return createHash('sha256').update(canonicalJson(norm)).digest('hex');
}

export async function readManifest(file: string): Promise<GuestManifest | undefined> {
  try {
    const m = JSON.parse(await readFile(file, 'utf8')) as GuestManifest;
    if (typeof m.inputsHash !== 'string' || typeof m.kernels !== 'object') return undefined;
    return m;
  } catch {
    return undefined;
  }
}

export async function writeManifest(file: string, m: GuestManifest): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, `${JSON.stringify(m, null, 2)}\n`);
  await rename(tmp, file);
}
