// crun in the guest without libsystemd. Debian's crun links libsystemd for
// two things: the systemd cgroup manager (sd-bus, only with
// --systemd-cgroup) and sd_notify (only with NOTIFY_SOCKET set). The guest
// has no systemd and the agent uses neither, but every crun start still
// loads libsystemd and what it pulls in (libgcrypt, libgpg-error, liblz4,
// libzstd, liblzma: ~2.6 MB, ~5,000 relocations). Under TCG that loading
// is most of a crun start: `crun --version` 35-37 ms in a warm guest, 23-25
// with the stub below, and `crun run` of /bin/true 104-110 → 85-90 ms.
//
// The stub is a shared object with libsystemd's soname and symbol versions,
// one entry per symbol crun imports (read from crun itself with `nm`), built
// with binutils (`as`, `ld`). sd_notify and sd_notify_barrier answer 0, what
// libsystemd answers when NOTIFY_SOCKET is unset; every other entry traps
// (ud2, SIGILL), so a crun that did reach systemd fails loudly, never
// silently. docs/guest-image.md.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from './exec.js';

export const LIBSYSTEMD_SONAME = 'libsystemd.so.0';

export interface VersionedSymbol {
  name: string;
  version: string;
}

/** The sd_* symbols `binary` imports, with their versions (from `nm -D --undefined-only`). */
export function parseSystemdImports(nmOutput: string): VersionedSymbol[] {
  const out: VersionedSymbol[] = [];
  for (const line of nmOutput.split('\n')) {
    const m = /^\s*U\s+(sd_[A-Za-z0-9_]+)@+(LIBSYSTEMD_\d+)\s*$/.exec(line);
    if (m && !out.some((s) => s.name === m[1])) out.push({ name: m[1]!, version: m[2]! });
  }
  return out;
}

/** Entries that answer "not notified" (0), as libsystemd does without NOTIFY_SOCKET. */
const ANSWER_ZERO = new Set(['sd_notify', 'sd_notify_barrier', 'sd_notifyf', 'sd_pid_notify']);

/** The stub's assembly: one global function per symbol. */
export function stubAssembly(symbols: readonly VersionedSymbol[]): string {
  const lines = ['# hako: libsystemd stub for crun in the guest (src/image/libsystemd-stub.ts)', '.text'];
  for (const { name } of symbols) {
    lines.push(`.globl ${name}`, `.type ${name},@function`, `${name}:`);
    lines.push(...(ANSWER_ZERO.has(name) ? ['  xorl %eax,%eax', '  ret'] : ['  ud2']));
  }
  return `${lines.join('\n')}\n`;
}

/**
 * The version script: one node per version, oldest first, each inheriting
 * the one before (as libsystemd's own), so the versioned references in crun
 * resolve.
 */
export function stubVersionScript(symbols: readonly VersionedSymbol[]): string {
  const versions = [...new Set(symbols.map((s) => s.version))].sort((a, b) => Number(a.split('_')[1]) - Number(b.split('_')[1]));
  const nodes = versions.map((v, i) => {
    const names = symbols.filter((s) => s.version === v).map((s) => `    ${s.name};`);
    const local = i === 0 ? ['  local: *;'] : [];
    return [`${v} {`, '  global:', ...names, ...local, `}${i > 0 ? ` ${versions[i - 1]}` : ''};`].join('\n');
  });
  return `${nodes.join('\n')}\n`;
}

/** Builds the stub for `binary`'s imports in `workDir`; returns its path, or undefined when the binary imports nothing from libsystemd. */
export async function buildLibsystemdStub(binary: string, workDir: string): Promise<string | undefined> {
  const hint = 'install binutils (apt-get install binutils)';
  const symbols = parseSystemdImports(await run('nm', ['-D', '--undefined-only', binary], { what: `nm ${binary}`, hint }));
  if (symbols.length === 0) return undefined;
  await mkdir(workDir, { recursive: true });
  const asm = path.join(workDir, 'libsystemd-stub.s');
  const obj = path.join(workDir, 'libsystemd-stub.o');
  const map = path.join(workDir, 'libsystemd-stub.map');
  const out = path.join(workDir, LIBSYSTEMD_SONAME);
  await writeFile(asm, stubAssembly(symbols));
  await writeFile(map, stubVersionScript(symbols));
  await run('as', ['-o', obj, asm], { what: 'as (libsystemd stub)', hint });
  await run('ld', ['-shared', '-soname', LIBSYSTEMD_SONAME, '--version-script', map, '-o', out, obj], { what: 'ld (libsystemd stub)', hint });
  return out;
}
