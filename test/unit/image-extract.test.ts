import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { ELF_MAGIC, XZ_MAGIC, extractVmlinuxBuffer, findMagicOffsets } from '../../src/image/vmlinux-extract.js';
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
