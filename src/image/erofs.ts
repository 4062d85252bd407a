// EROFS image of the staging tree, for booting the rootfs from a read-only virtio-blk disk.
import { rename, rm } from 'node:fs/promises';
import { run } from './exec.js';

/** Fixed filesystem UUID (reproducible images). */
export const EROFS_UUID = '68616b6f-0000-4000-8000-000000000001';

export async function buildErofs(stage: string, outPath: string): Promise<void> {
  const tmp = `${outPath}.tmp-${process.pid}`;
  await rm(tmp, { force: true });
  try {
    // Fixed timestamp and UUID, root-owned: reproducible output for identical input.
    await run('mkfs.erofs', ['--quiet', '--all-root', '-T0', `-U${EROFS_UUID}`, tmp, stage], {
      what: `mkfs.erofs ${outPath}`,
      hint: 'install erofs-utils (apt-get install erofs-utils)',
    });
    await rename(tmp, outPath);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
