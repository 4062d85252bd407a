import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { ELF_MAGIC, XZ_MAGIC, extractVmlinuxBuffer, findMagicOffsets, trimSegmentZeroTails } from '../../src/image/vmlinux-extract.js';
import { inputsHash, type ImageInputs } from '../../src/image/manifest.js';
import { isBuildLine, minimalKernelKey } from '../../src/image/minimal-kernel.js';

test('findMagicOffsets finds every (also overlapping-start) occurrence in order', () => {
  const buf = Buffer.concat([Buffer.from('abc'), XZ_MAGIC, Buffer.from('zz'), XZ_MAGIC, XZ_MAGIC]);
  assert.deepEqual(findMagicOffsets(buf), [3, 11, 17]);
  assert.deepEqual(findMagicOffsets(Buffer.from('no magic here')), []);
});

test('extractVmlinuxBuffer skips a bogus xz candidate and returns the ELF payload', async (t) => {
  if (spawnSync('xz', ['--version']).status !== 0) return t.skip('xz not installed');
  const elf = Buffer.concat([ELF_MAGIC, Buffer.alloc(4096, 7)]);
  const xz = spawnSync('xz', ['-c', '--check=crc32'], { input: elf }).stdout;
  const notElf = spawnSync('xz', ['-c'], { input: Buffer.from('not an elf') }).stdout;
  // Header, a fake magic with garbage, a real stream whose content is not ELF, the real one, trailer.
  const image = Buffer.concat([Buffer.alloc(512, 1), XZ_MAGIC, Buffer.alloc(64, 9), notElf, Buffer.alloc(16), xz, Buffer.alloc(100, 3)]);
  const out = await extractVmlinuxBuffer(image);
  assert.ok(out.equals(elf));
  await assert.rejects(extractVmlinuxBuffer(Buffer.concat([Buffer.alloc(64), notElf])), /no XZ-compressed ELF/);
});

/** A little-endian ELF64 with PT_LOAD segments at 0x1000, 0x4000, ...: [filesz, memsz, content]. */
function elf64(segments: Array<[number, number, Buffer]>): Buffer {
  const out = Buffer.alloc(0x1000 + segments.length * 0x3000);
  ELF_MAGIC.copy(out, 0);
  out[4] = 2; // ELFCLASS64
  out[5] = 1; // little-endian
  out.writeBigUInt64LE(64n, 0x20); // e_phoff
  out.writeUInt16LE(56, 0x36); // e_phentsize
  out.writeUInt16LE(segments.length + 1, 0x38); // e_phnum (plus a PT_NOTE)
  segments.forEach(([filesz, memsz, content], i) => {
    const ph = 64 + i * 56;
    const offset = 0x1000 + i * 0x3000;
    out.writeUInt32LE(1, ph); // PT_LOAD
    out.writeBigUInt64LE(BigInt(offset), ph + 8);
    out.writeBigUInt64LE(BigInt(filesz), ph + 32);
    out.writeBigUInt64LE(BigInt(memsz), ph + 40);
    content.copy(out, offset);
  });
  const note = 64 + segments.length * 56;
  out.writeUInt32LE(4, note); // PT_NOTE: never touched
  out.writeBigUInt64LE(0x10n, note + 32);
  return out;
}

const fileSizes = (elf: Buffer, n: number): number[] => Array.from({ length: n + 1 }, (_, i) => Number(elf.readBigUInt64LE(64 + i * 56 + 32)));

test('trimSegmentZeroTails leaves whole pages of trailing zeros out of each PT_LOAD file size', () => {
  const elf = elf64([
    [0x3000, 0x3000, Buffer.alloc(0x1001, 5)], // data ends 1 byte into its 2nd page: 2 pages kept
    [0x3000, 0x5000, Buffer.alloc(0x3000, 6)], // no zero tail: unchanged
    [0x2000, 0x2000, Buffer.alloc(0)], // all zeros: nothing kept from the file
    [0x800, 0x800, Buffer.alloc(0x10, 1)], // less than a page of zeros: unchanged
  ]);
  const before = Buffer.from(elf);
  assert.equal(trimSegmentZeroTails(elf), 0x1000 + 0x2000);
  assert.deepEqual(fileSizes(elf, 4), [0x2000, 0x3000, 0, 0x800, 0x10]);
  // Only the file sizes changed; memory sizes and contents did not.
  for (let i = 0; i < 4; i++) elf.writeBigUInt64LE(before.readBigUInt64LE(64 + i * 56 + 32), 64 + i * 56 + 32);
  assert.ok(elf.equals(before));
  assert.equal(trimSegmentZeroTails(Buffer.from('not an elf')), 0);
  const big = Buffer.from(before);
  big[5] = 2; // big-endian: left alone
  assert.equal(trimSegmentZeroTails(big), 0);
});

test('inputsHash is stable under key/kernel order and changes with any input', () => {
  const base: ImageInputs = {
    agentHash: 'a'.repeat(64),
    node: { path: '/usr/bin/node', size: 1, mtimeMs: 2, version: 'v20.0.0' },
    crunVersion: '1.8.1',
    busyboxVersion: 'BusyBox v1.35.0',
    genericKernel: 'linux-image-6.1.0-56-amd64=6.1.192-2',
    kernels: ['generic', 'minimal'],
    rootfsFormat: 'initrd',
    nodePtyHash: 'b',
    layoutVersion: '1',
  };
  const h = inputsHash(base);
  assert.equal(inputsHash({ ...base, kernels: ['minimal', 'generic'] }), h);
  assert.equal(inputsHash(JSON.parse(JSON.stringify({ ...base, node: { version: 'v20.0.0', mtimeMs: 2, size: 1, path: '/usr/bin/node' } }))), h);
  assert.notEqual(inputsHash({ ...base, node: { ...base.node, mtimeMs: 3 } }), h);
  assert.notEqual(inputsHash({ ...base, crunVersion: '1.8.2' }), h);
  assert.notEqual(inputsHash({ ...base, rootfsFormat: 'erofs' }), h);
});

test('minimal kernel key matches the documented formula; build lines are recognised', () => {
  assert.equal(minimalKernelKey('CONFIG_X=y\n', '6.1.192-2'), minimalKernelKey('CONFIG_X=y\n', '6.1.192-2'));
  assert.notEqual(minimalKernelKey('CONFIG_X=y\n', '6.1.192-2'), minimalKernelKey('CONFIG_X=y\n', '6.1.192-3'));
  assert.match(minimalKernelKey('a', 'b'), /^[0-9a-f]{16}$/);
  // first 16 hex of sha256("a\0b")
  assert.equal(minimalKernelKey('a', 'b'), '59b271ae1bbcb1d3');
  assert.ok(isBuildLine('  CC      kernel/fork.o'));
  assert.ok(isBuildLine('  LD      vmlinux.o'));
  assert.ok(!isBuildLine('make[1]: Entering directory'));
});

test('a build tool that is missing is named with the hint that installs it', async () => {
  const { run } = await import('../../src/image/exec.js');
  await assert.rejects(run('hako-no-such-tool', ['-x'], { hint: 'install binutils (apt-get install binutils)' }), /^Error: cannot run hako-no-such-tool: .*ENOENT; install binutils \(apt-get install binutils\)$/);
});
