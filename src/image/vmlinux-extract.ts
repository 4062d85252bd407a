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

const PT_LOAD = 1;
const PAGE = 4096;

/**
 * Leaves the zero bytes that end a loadable segment out of its file size
 * (p_filesz), in place, and returns how many bytes that was. A loader fills a
 * segment's memory beyond p_filesz with zeros (the ELF rule for .bss), so the
 * guest sees the same memory. Debian's vmlinux ends its last segment with
 * .bss, .brk and .init.scratch (~23 MiB of zeros, in the file because the
 * PROGBITS .init.scratch follows .bss): QEMU maps the kernel file for as long
 * as the VM runs (its ROM copy for a reset) and read all of them, so every cold
 * VM kept them in its PSS as page cache. Segments are shortened by whole pages
 * only; anything that is not a little-endian ELF64 is left alone.
 */
export function trimSegmentZeroTails(elf: Buffer): number {
  if (elf.length < 64 || !elf.subarray(0, 4).equals(ELF_MAGIC) || elf[4] !== 2 || elf[5] !== 1) return 0;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  let trimmed = 0;
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 56 > elf.length || elf.readUInt32LE(ph) !== PT_LOAD) continue;
    const offset = Number(elf.readBigUInt64LE(ph + 8));
    const filesz = Number(elf.readBigUInt64LE(ph + 32));
    if (offset + filesz > elf.length) continue;
    let end = offset + filesz;
    while (end > offset && elf[end - 1] === 0) end--;
    const keep = Math.min(filesz, Math.ceil((end - offset) / PAGE) * PAGE);
    if (keep >= filesz) continue;
    elf.writeBigUInt64LE(BigInt(keep), ph + 32);
    trimmed += filesz - keep;
  }
  return trimmed;
}

/** Extracts `vmlinuzPath` into `outPath` (writeKernelImage). */
export async function extractVmlinux(vmlinuzPath: string, outPath: string): Promise<void> {
  await writeKernelImage(await extractVmlinuxBuffer(await readFile(vmlinuzPath)), outPath);
}

/** Writes a guest kernel ELF to `outPath` (a temp file, then renamed), its segments' zero tails trimmed. */
export async function writeKernelImage(elf: Buffer, outPath: string): Promise<void> {
  trimSegmentZeroTails(elf);
  const tmp = `${outPath}.tmp-${process.pid}`;
  try {
    await writeFile(tmp, elf, { mode: 0o644 });
    await rename(tmp, outPath);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
