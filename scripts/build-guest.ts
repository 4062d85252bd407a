// Dev runner for the guest image builder:
//   npx tsx scripts/build-guest.ts --out build/share/hako/guest --kernel generic|minimal|both \
//     --agent build/lib/hako/hako-agent.js [--rootfs initrd|erofs] [--cache /var/cache/hako] [--force]
import { Command } from 'commander';
import path from 'node:path';
import { buildGuestImage } from '../src/image/builder.js';
import type { KernelFlavor, RootfsFormat } from '../src/image/manifest.js';

const program = new Command()
  .name('build-guest')
  .description('Build the hako guest image (kernels, rootfs, manifest.json)')
  .option('--out <dir>', 'output directory', 'build/share/hako/guest')
  .option('--kernel <which>', 'generic | minimal | both', 'generic')
  .option('--rootfs <format>', 'initrd | erofs', 'initrd')
  .option('--agent <file>', 'agent bundle', 'build/lib/hako/hako-agent.js')
  .option('--node-pty <dir>', 'node-pty package directory', 'node_modules/node-pty')
  .option('--cache <dir>', 'cache directory', '/var/cache/hako')
  .option('--force', 'rebuild even if up to date', false)
  .parse();

const o = program.opts<{ out: string; kernel: string; rootfs: string; agent: string; nodePty: string; cache: string; force: boolean }>();
const kernels: KernelFlavor[] =
  o.kernel === 'both' ? ['generic', 'minimal'] : o.kernel === 'generic' || o.kernel === 'minimal' ? [o.kernel] : [];
if (kernels.length === 0) {
  console.error(`--kernel must be generic, minimal or both (got ${o.kernel})`);
  process.exit(2);
}
if (o.rootfs !== 'initrd' && o.rootfs !== 'erofs') {
  console.error(`--rootfs must be initrd or erofs (got ${o.rootfs})`);
  process.exit(2);
}

try {
  const started = Date.now();
  const m = await buildGuestImage({
    outDir: path.resolve(o.out),
    cacheDir: o.cache,
    kernels,
    rootfsFormat: o.rootfs as RootfsFormat,
    agentBundle: path.resolve(o.agent),
    nodePtyDir: path.resolve(o.nodePty),
    force: o.force,
  });
  process.stderr.write(`done in ${((Date.now() - started) / 1000).toFixed(1)} s: ${path.join(path.resolve(o.out), 'manifest.json')}\n`);
  process.stdout.write(`${JSON.stringify(m, null, 2)}\n`);
} catch (e) {
  console.error(`build-guest: ${(e as Error).message}`);
  process.exit(1);
}
