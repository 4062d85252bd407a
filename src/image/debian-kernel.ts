// The "generic" guest kernel: Debian's linux-image-6.1.0-*-amd64, downloaded with apt.
import { mkdir, readdir, rm, rename, stat } from 'node:fs/promises';
import path from 'node:path';
import { run } from './exec.js';

export interface DebianKernel {
  /** Binary package name, e.g. linux-image-6.1.0-56-amd64. */
  pkg: string;
  /** Debian package version, e.g. 6.1.192-2. */
  version: string;
  /** Kernel release (uname -r), e.g. 6.1.0-56-amd64. */
  release: string;
  /** The extracted package root (contains boot/ and lib/modules/). */
  root: string;
  /** Path of boot/vmlinuz-<release> inside root. */
  vmlinuz: string;
}

/** Parses `apt-cache depends linux-image-amd64` output and returns the linux-image-6.1.0-N-amd64 name. */
export function parseKernelDepends(out: string): string {
  const names = [...out.matchAll(/Depends:\s*<?(linux-image-[0-9][^\s>]*-amd64)>?/g)].map((m) => m[1]!);
  if (names.length === 0) {
    throw new Error(
      'apt-cache depends linux-image-amd64 names no linux-image-*-amd64 package; run apt-get update',
    );
  }
  return names[0]!;
}

export async function resolveKernelPackage(): Promise<{ pkg: string; version: string }> {
  const deps = await run('apt-cache', ['depends', 'linux-image-amd64'], {
    what: 'apt-cache depends linux-image-amd64',
    hint: 'run apt-get update',
  });
  const pkg = parseKernelDepends(deps);
  const policy = await run('apt-cache', ['policy', pkg], { what: `apt-cache policy ${pkg}`, hint: 'run apt-get update' });
  const m = /Candidate:\s*(\S+)/.exec(policy);
  if (!m || m[1] === '(none)') throw new Error(`no installable version of ${pkg}; run apt-get update`);
  return { pkg, version: m[1]! };
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** Downloads (cached in <cacheDir>/debs) and extracts the kernel package. */
export async function fetchDebianKernel(cacheDir: string, pkg: string, version: string): Promise<DebianKernel> {
  const release = pkg.replace(/^linux-image-/, '');
  const debs = path.join(cacheDir, 'debs');
  await mkdir(debs, { recursive: true });
  const debName = `${pkg}_${version.replace(/^\d+:/, '')}_amd64.deb`;
  const deb = path.join(debs, debName);
  if (!(await exists(deb))) {
    await run('apt-get', ['download', `${pkg}=${version}`], {
      cwd: debs,
      what: `apt-get download ${pkg}`,
      hint: 'run apt-get update (and check network access to the Debian mirror)',
    });
    if (!(await exists(deb))) {
      const found = (await readdir(debs)).filter((f) => f.startsWith(`${pkg}_`));
      throw new Error(`apt-get download ${pkg} produced no ${debName} (found: ${found.join(', ') || 'nothing'})`);
    }
  }
  const dir = path.join(cacheDir, 'kernel', `generic-${version}`);
  const root = path.join(dir, 'root');
  const vmlinuz = path.join(root, 'boot', `vmlinuz-${release}`);
  if (!(await exists(vmlinuz))) {
    const tmp = `${root}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    await run('dpkg-deb', ['-x', deb, tmp], {
      what: `dpkg-deb -x ${deb}`,
      hint: `delete ${deb} and retry (the download may be corrupt)`,
    });
    await rm(root, { recursive: true, force: true });
    await rename(tmp, root);
  }
  if (!(await exists(vmlinuz))) throw new Error(`${pkg} has no boot/vmlinuz-${release}; unexpected package layout`);
  return { pkg, version, release, root, vmlinuz };
}
