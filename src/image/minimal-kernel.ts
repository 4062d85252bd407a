// The "minimal" guest kernel: tinyconfig + src/image/kernel/minimal.config, built from Debian's
// linux-source-6.1, everything built in. Cached in <cacheDir>/kernel/minimal-<key>/vmlinux where
// key = first 16 hex of sha256(fragment + "\0" + linux-source-6.1 package version).
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { copyFile, mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { moduleDir } from '../runtime/paths.js';
import { run, runRaw } from './exec.js';
import type { Reporter } from './progress.js';

export const MINIMAL_FRAGMENT = path.join(moduleDir(import.meta.url), 'kernel', 'minimal.config');
export const LINUX_SOURCE_PKG = 'linux-source-6.1';
export const LINUX_SOURCE_TARBALL = '/usr/src/linux-source-6.1.tar.xz';
/** Roughly how many CC/LD/AR/... lines a tinyconfig+fragment vmlinux build prints. */
export const BUILD_LINE_ESTIMATE = 1750;

export function minimalKernelKey(fragment: string, sourceVersion: string): string {
  return createHash('sha256').update(`${fragment}\0${sourceVersion}`).digest('hex').slice(0, 16);
}

export async function linuxSourceVersion(): Promise<string> {
  const r = await runRaw('dpkg-query', ['-W', '-f=${Version}', LINUX_SOURCE_PKG]);
  const v = r.stdout.toString().trim();
  if (r.code !== 0 || !v) {
    throw new Error(`${LINUX_SOURCE_PKG} is not installed; run apt-get install ${LINUX_SOURCE_PKG} (needed for the minimal kernel)`);
  }
  return v;
}

export interface MinimalKernel {
  key: string;
  dir: string;
  vmlinux: string;
  release: string;
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** True for the kbuild progress lines we count ("  CC      kernel/fork.o"). */
export function isBuildLine(line: string): boolean {
  return /^\s{2}(CC|LD|AR|AS|HOSTCC|HOSTLD|GEN|CHK|UPD|OBJCOPY|VDSO\S*|SYSHDR|SYSTBL|WRAP|MKELF|RELOCS|POLICY|CALL|KSYMS|SORTTAB|NM|COPY|LDS)\s/.test(
    line,
  );
}

async function kernelRelease(dir: string): Promise<string> {
  const f = path.join(dir, 'src', 'include', 'config', 'kernel.release');
  if (await exists(f)) return (await readFile(f, 'utf8')).trim();
  return (await run('make', ['-s', 'ARCH=x86_64', 'kernelrelease'], { cwd: path.join(dir, 'src') })).trim();
}

/** Resolves the cache key and returns the cached kernel, building it when absent. */
export async function ensureMinimalKernel(cacheDir: string, reporter?: Reporter): Promise<MinimalKernel> {
  const fragmentText = await readFile(MINIMAL_FRAGMENT, 'utf8');
  const key = minimalKernelKey(fragmentText, await linuxSourceVersion());
  const dir = path.join(cacheDir, 'kernel', `minimal-${key}`);
  const vmlinux = path.join(dir, 'vmlinux');
  if (!(await exists(vmlinux))) await buildMinimalKernel(dir, reporter);
  return { key, dir, vmlinux, release: await kernelRelease(dir) };
}

async function buildMinimalKernel(dir: string, reporter?: Reporter): Promise<void> {
  const src = path.join(dir, 'src');
  await mkdir(dir, { recursive: true });
  const logPath = path.join(dir, 'build.log');
  const log = createWriteStream(logPath, { flags: 'a' });
  const hint = `see ${logPath}; install build-essential flex bison bc libelf-dev libssl-dev if tools are missing`;
  try {
    if (!(await exists(path.join(src, 'Makefile')))) {
      if (!(await exists(LINUX_SOURCE_TARBALL))) {
        throw new Error(`${LINUX_SOURCE_TARBALL} is missing; run apt-get install ${LINUX_SOURCE_PKG}`);
      }
      reporter?.info(`  extracting ${LINUX_SOURCE_TARBALL}`);
      await rm(src, { recursive: true, force: true });
      await mkdir(src, { recursive: true });
      await run('tar', ['-xf', LINUX_SOURCE_TARBALL, '-C', src, '--strip-components=1'], {
        what: `extracting ${LINUX_SOURCE_TARBALL}`,
        hint: `check free space in ${dir}`,
      });
    }
    const step = async (args: string[], what: string, onLine?: (l: string) => void): Promise<void> => {
      log.write(`\n### ${args.join(' ')}\n`);
      const r = await runRaw(args[0]!, args.slice(1), {
        cwd: src,
        maxStdout: 0,
        onLine: (l) => {
          log.write(`${l}\n`);
          onLine?.(l);
        },
      });
      if (r.code !== 0) throw new Error(`minimal kernel: ${what} failed (exit ${r.code}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}; ${hint}`);
    };
    await step(['make', 'ARCH=x86_64', 'tinyconfig'], 'make tinyconfig');
    await step(['scripts/kconfig/merge_config.sh', '-m', '.config', MINIMAL_FRAGMENT], 'merge_config.sh');
    await step(['make', 'ARCH=x86_64', 'olddefconfig'], 'make olddefconfig');
    const bar = reporter?.sub('make vmlinux', BUILD_LINE_ESTIMATE);
    let n = 0;
    try {
      await step(['make', 'ARCH=x86_64', '-j2', 'vmlinux'], 'make vmlinux', (l) => {
        if (isBuildLine(l)) bar?.update(++n, l.trim());
      });
    } finally {
      bar?.stop();
    }
    const tmp = path.join(dir, `vmlinux.tmp-${process.pid}`);
    await copyFile(path.join(src, 'vmlinux'), tmp);
    await rename(tmp, path.join(dir, 'vmlinux'));
  } finally {
    await new Promise<void>((r) => log.end(r));
  }
}
