// Uncompressed cpio (newc) initramfs of the staging tree: the kernel unpacks it without
// running a decompressor (slow under TCG).
import { rename, rm } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { spawn } from 'node:child_process';
import { listTree } from './rootfs-tree.js';

export async function buildInitrd(stage: string, outPath: string): Promise<void> {
  const files = await listTree(stage);
  const tmp = `${outPath}.tmp-${process.pid}`;
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn('cpio', ['-o', '-H', 'newc', '--owner=0:0', '--reproducible', '--quiet'], {
        cwd: stage,
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      const out = createWriteStream(tmp);
      let err = '';
      child.stderr.on('data', (c: Buffer) => (err += c.toString()));
      child.stdout.pipe(out);
      child.on('error', (e) => reject(new Error(`cannot run cpio: ${e.message}; apt-get install cpio`)));
      let exitCode: number | null = null;
      let finished = false;
      const done = (): void => {
        if (exitCode === null || !finished) return;
        if (exitCode !== 0) reject(new Error(`cpio -o -H newc failed (exit ${exitCode}): ${err.trim()}; check the staging tree ${stage}`));
        else resolve();
      };
      out.on('finish', () => {
        finished = true;
        done();
      });
      out.on('error', reject);
      child.on('close', (code) => {
        exitCode = code ?? -1;
        done();
      });
      child.stdin.end(files.join('\n') + '\n');
    });
    await rename(tmp, outPath);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
