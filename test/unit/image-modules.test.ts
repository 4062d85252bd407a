import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseShowDepends, renderModulesList } from '../../src/image/modules.js';
import { parseKernelDepends } from '../../src/image/debian-kernel.js';
import { parseLdd } from '../../src/image/rootfs-tree.js';

const ROOT = '/var/cache/hako/kernel/generic-6.1.192-2/root';
const K = '/lib/modules/6.1.0-56-amd64/kernel';

test('parseShowDepends keeps load order, de-duplicates, strips the -d root, skips builtins', () => {
  const out = [
    `insmod ${ROOT}${K}/drivers/virtio/virtio_ring.ko `,
    `insmod ${ROOT}${K}/drivers/virtio/virtio.ko `,
    `insmod ${ROOT}${K}/drivers/virtio/virtio_mmio.ko `,
    `insmod ${ROOT}${K}/drivers/virtio/virtio_ring.ko `,
    `insmod ${ROOT}${K}/drivers/virtio/virtio.ko `,
    `insmod ${ROOT}${K}/drivers/char/virtio_console.ko `,
    'builtin crc32c_generic',
    `insmod ${ROOT}${K}/net/9p/9pnet.ko `,
    `insmod ${ROOT}${K}/fs/9p/9p.ko debug=0`,
    '',
  ].join('\n');
  const list = parseShowDepends(out, `${ROOT}/`);
  assert.deepEqual(list, [
    `${K}/drivers/virtio/virtio_ring.ko`,
    `${K}/drivers/virtio/virtio.ko`,
    `${K}/drivers/virtio/virtio_mmio.ko`,
    `${K}/drivers/char/virtio_console.ko`,
    `${K}/net/9p/9pnet.ko`,
    `${K}/fs/9p/9p.ko`,
  ]);
  assert.equal(renderModulesList(list.slice(0, 2)), `${K}/drivers/virtio/virtio_ring.ko\n${K}/drivers/virtio/virtio.ko\n`);
});

test('parseKernelDepends finds the versioned image package and rejects junk', () => {
  const out = 'linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n';
  assert.equal(parseKernelDepends(out), 'linux-image-6.1.0-56-amd64');
  assert.throws(() => parseKernelDepends('linux-image-amd64\n'), /apt-get update/);
});

test('parseLdd returns libraries and the loader, not the vdso', () => {
  const out = [
    '\tlinux-vdso.so.1 (0x00007ffc)',
    '\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f00)',
    '\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f01)',
    '\t/lib64/ld-linux-x86-64.so.2 (0x00007f02)',
  ].join('\n');
  assert.deepEqual(parseLdd(out), [
    '/lib/x86_64-linux-gnu/libstdc++.so.6',
    '/lib/x86_64-linux-gnu/libc.so.6',
    '/lib64/ld-linux-x86-64.so.2',
  ]);
});
