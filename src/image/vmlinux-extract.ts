// Extracts the uncompressed ELF vmlinux from a (Debian, XZ-compressed) bzImage,
// so QEMU can PVH-boot it directly (no in-guest decompression under TCG).
import { readFile, writeFile, rename, rm } from 'node:fs/promises';
import { runRaw } from './exec.js';

export const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
export const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

/** All offsets at which `magic` occurs in `buf`, in increasing order. */
export function findMagicOffsets(buf: Buffer, magic: Buffer = XZ_MAGIC): number[] {
  const offsets: number[] = [];
  let from = 0;
  for (;;) {
    const at = buf.indexOf(magic, from);
    if (at < 0) break;
    offsets.push(at);
    from = at + 1;
  }
  return offsets;
}

/** Decompresses one xz stream starting at `offset`; trailing bytes after the stream are ignored. */
async function xzDecompressAt(buf: Buffer, offset: number): Promise<Buffer | undefined> {
  const r = await runRaw('xz', ['-dc', '--single-stream'], { input: buf.subarray(offset) });
  // xz may complain about trailing garbage with a non-zero status yet have produced the data.
  if (r.stdout.length === 0) return undefined;
  return r.stdout;
}

/** Returns the ELF image inside the bzImage `vmlinuz`, or throws. */
export async function extractVmlinuxBuffer(vmlinuz: Buffer): Promise<Buffer> {
  if (vmlinuz.subarray(0, 4).equals(ELF_MAGIC)) return vmlinuz;
  const offsets = findMagicOffsets(vmlinuz, XZ_MAGIC);
  for (const off of offsets) {
    const out = await xzDecompressAt(vmlinuz, off);
    if (out && out.subarray(0, 4).equals(ELF_MAGIC)) return out;
  }
  throw new Error(
    `no XZ-compressed ELF image found in the kernel (${offsets.length} xz magic candidates tried); ` +
      'is xz-utils installed and is this a Debian amd64 bzImage?',
  );
}

/** Extracts `vmlinuzPath` into `outPath` (written to a temp file, then renamed). */
export async function extractVmlinux(vmlinuzPath: string, outPath: string): Promise<void> {
  const elf = await extractVmlinuxBuffer(await readFile(vmlinuzPath));
  const tmp = `${outPath}.tmp-${process.pid}`;
  try {
    await writeFile(tmp, elf, { mode: 0o644 });
    await rename(tmp, outPath);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
