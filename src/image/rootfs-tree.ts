// The guest root filesystem staging tree, shared by both kernels and both rootfs formats:
// busybox (init + applets), node + its libraries, crun + its libraries, the agent bundle,
// node-pty, the init scripts and (for the generic kernel) the virtio/9p/erofs modules.
import { chmod, copyFile, cp, mkdir, readdir, rm, stat, symlink, writeFile, lstat } from 'node:fs/promises';
import path from 'node:path';
import { run, runRaw } from './exec.js';
import { stageModules } from './modules.js';
import { LIBSYSTEMD_SONAME, buildLibsystemdStub } from './libsystemd-stub.js';
import { HELPER_DIR, HELPER_FDS_ENV, HELPER_SH } from '../agent/helper-shell.js';

export interface StageOptions {
  /** Directory to (re)create. */
  dir: string;
  agentBundle: string;
  nodePtyDir: string;
  nodeBinary: string;
  crunBinary: string;
  busyboxBinary: string;
  /** Modules for the generic kernel, if it is part of the image. */
  modules?: { kernelRoot: string; release: string };
  /**
   * node and crun live on their own read-only image (NODE_IMAGE_MOUNT, see
   * stageNodeImageTree) rather than in this tree: /usr/bin/node and
   * /usr/bin/crun are links to it. Their libraries stay in the tree.
   */
  nodeAndCrunOnImage?: boolean;
}

/** Where rc.sh mounts the node image (`hako.node_image=<device>` on the kernel command line). */
export const NODE_IMAGE_MOUNT = '/opt/node';

export const GUEST_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

export const INITTAB = ['::sysinit:/etc/hako/rc.sh', '::once:/etc/hako/agent.sh', '::shutdown:/bin/umount -a -r', ''].join('\n');

/**
 * PID 1. crun's pivot_root fails on the initramfs itself (rootfs is not a mount
 * it may move), so / becomes a bind mount of itself first; then busybox init
 * (which reaps orphans) takes over as PID 1.
 */
export const INIT_SH = `#!/bin/busybox sh
if /bin/busybox mount --rbind / /mnt 2>/dev/null; then
  cd /mnt && /bin/busybox mount --move . / && exec /bin/busybox chroot . /bin/busybox init
fi
exec /bin/busybox init
`;

/** Early guest setup, run by busybox init as sysinit. */
export const RC_SH = `#!/bin/sh
# hako guest init (sysinit): filesystems, modules, loopback.
export PATH=${GUEST_PATH}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts
ln -sf pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
case " $(cat /proc/cmdline) " in
*" hako.probe=1 "*) exit 0 ;;
esac
list=/lib/modules/$(uname -r)/hako-modules.list
late=
if [ -f "$list" ]; then
  while read -r m; do
    [ -n "$m" ] || continue
    # Free page reporting (virtio_balloon) starts handing freed memory back at
    # once; under TCG that slowed the agent's start by 0.6-0.8 s. Loaded once
    # the boot has settled, it still reports every free page (a full pass at
    # registration).
    case "$m" in */virtio_balloon.ko*) late="$late $m"; continue ;; esac
    out=$(insmod "$m" 2>&1) || case "$out" in
      *"File exists"*|*"No such device"*) ;;
      *) echo "hako rc: insmod $m: $out" ;;
    esac
  done < "$list"
fi
mkdir -p /sys/fs/cgroup
if mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup; then
  echo "+cpu +memory +pids +io +cpuset" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
  for c in cpu memory pids io cpuset; do echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; done
fi
# The sandbox share, when the host names it (hako.share=<tag>,<msize>): mounted here by
# busybox rather than by the agent, whose process spawns cost ~0.1 s under TCG.
# node's own read-only image (hako.node_image=<device>, erofs on virtio-blk): the
# guest's page cache then holds only the parts of node that run, where a copy
# in this tmpfs root held all of it.
for w in $(cat /proc/cmdline); do
  case "$w" in
  hako.share=*)
    v=\${w#hako.share=}
    mkdir -p /run/hako/shared
    mount -t 9p -o "trans=virtio,version=9p2000.L,cache=mmap,msize=\${v#*,}" "\${v%%,*}" /run/hako/shared ;;
  hako.node_image=*)
    d=\${w#hako.node_image=}
    n=0
    while [ ! -b "$d" ] && [ $n -lt 300 ]; do sleep 0.01; n=$((n + 1)); done
    mount -t erofs -o ro "$d" ${NODE_IMAGE_MOUNT} || echo "hako rc: cannot mount the node image $d on ${NODE_IMAGE_MOUNT}: the agent will not start" ;;
  esac
done
hostname -F /etc/hostname 2>/dev/null
ip link set lo up 2>/dev/null
[ -n "$late" ] && (sleep 6; for m in $late; do insmod "$m" 2>/dev/null; done) </dev/null >/dev/null 2>&1 &
exit 0
`;

/**
 * Starts the agent (busybox init "once" action); stops the VM when it exits.
 * Without ACPI (minimal kernel, or microvm,acpi=off) the kernel cannot power off and
 * `poweroff -f` would only halt: there a reset (`reboot -f`) ends QEMU, run with -no-reboot.
 */
export const AGENT_SH = `#!/bin/sh
# hako guest agent launcher.
export PATH=${GUEST_PATH} HOME=/root UV_THREADPOOL_SIZE=8
stop_vm() {
  if [ -d /sys/firmware/acpi ]; then /bin/busybox poweroff -f; fi
  /bin/busybox reboot -f
}
case " $(cat /proc/cmdline) " in
*" hako.probe=1 "*)
  echo HAKO_PROBE_OK > /dev/console
  stop_vm ;;
esac
read -r up _ < /proc/uptime && echo "$up" > /run/hako-agent-start
# Extra node options from the kernel command line: hako.node_opts=--a,--b=c
node_opts=
for w in $(cat /proc/cmdline); do
  case "$w" in hako.node_opts=*) node_opts=$(echo "\${w#hako.node_opts=}" | tr ',' ' ') ;; esac
done
cd /
# The helper shell (src/agent/helper-shell.ts) runs the agent's commands, so that
# the agent does not fork itself; started first, its own fork is cheap. Both FIFO
# opens below return once the helper has opened its ends.
h=${HELPER_DIR}
if mkdir -p $h && mkfifo -m 600 $h/in $h/out; then
  /bin/sh /etc/hako/helper.sh <$h/in >$h/out &
  ${HELPER_FDS_ENV}=3,4 /usr/bin/node $node_opts /opt/hako/hako-agent.js 3>$h/in 4<$h/out
else
  /usr/bin/node $node_opts /opt/hako/hako-agent.js
fi
stop_vm
`;

const ETC_FILES: Record<string, string> = {
  'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
  'etc/group': 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n',
  'etc/hostname': 'hako\n',
  'etc/hosts': '127.0.0.1\tlocalhost hako\n::1\tlocalhost ip6-localhost ip6-loopback\n',
  'etc/nsswitch.conf': 'passwd: files\ngroup: files\nhosts: files dns\n',
  'etc/inittab': INITTAB,
};

const EMPTY_DIRS = ['proc', 'sys', 'dev', 'run', 'tmp', 'root', 'mnt', 'var', 'var/tmp', 'etc/hako', 'opt/hako', 'usr/bin', 'usr/sbin', 'bin', 'sbin'];

/** Parses `ldd` output: each library by its soname and path, and the dynamic loader (its path only). */
function parseLddEntries(out: string): Array<{ soname?: string; path: string }> {
  const entries: Array<{ soname?: string; path: string }> = [];
  for (const raw of out.split('\n')) {
    const line = raw.trim();
    const lib = /^(\S+)\s+=>\s+(\/\S+)\s+\(/.exec(line);
    const loader = lib ? null : /^(\/\S+)\s+\(/.exec(line);
    const entry = lib ? { soname: lib[1]!, path: lib[2]! } : loader ? { path: loader[1]! } : undefined;
    if (entry && !entries.some((e) => e.path === entry.path)) entries.push(entry);
  }
  return entries;
}

/** Parses `ldd` output into the absolute paths of the libraries and the dynamic loader. */
export function parseLdd(out: string): string[] {
  return parseLddEntries(out).map((e) => e.path);
}

/** `ldd binary`'s output, or undefined for a static binary (one run of ldd for both answers). */
async function lddOf(binary: string): Promise<string | undefined> {
  const r = await runRaw('ldd', [binary]);
  const text = r.stdout.toString();
  if (/not a dynamic executable|statically linked/.test(text + r.stderr)) return undefined;
  if (r.code !== 0) throw new Error(`ldd ${binary} failed: ${r.stderr.trim() || `status ${r.code}`}; is libc-bin installed?`);
  return text;
}

/**
 * Copies an executable to `dst` inside `stage`. `strip`: without its symbol
 * table and debug sections (its dynamic symbols stay, which native addons
 * link against): every byte of the guest's files is guest RAM or page cache,
 * and node's 99 MB binary carries ~12.6 MB of those.
 */
async function placeExecutable(stage: string, src: string, dst: string, opts: { strip?: boolean } = {}): Promise<void> {
  await mkdir(path.dirname(path.join(stage, dst)), { recursive: true });
  if (opts.strip) {
    await run('strip', ['--strip-all', '-o', path.join(stage, dst), src], { what: `strip ${src}`, hint: 'install binutils (apt-get install binutils)' });
  } else {
    await copyFile(src, path.join(stage, dst));
  }
  await chmod(path.join(stage, dst), 0o755);
}

/** Copies an executable and every shared library it needs to the same paths inside `stage`. */
async function stageBinary(stage: string, src: string, dst: string, opts: { strip?: boolean } = {}): Promise<void> {
  await placeExecutable(stage, src, dst, opts);
  await stageLibs(stage, src);
}

async function stageLibs(stage: string, binary: string): Promise<void> {
  const out = await lddOf(binary);
  for (const lib of out === undefined ? [] : parseLdd(out)) await stageLib(stage, lib);
}

/** Copies one library to its own path inside `stage` (once). */
async function stageLib(stage: string, lib: string): Promise<void> {
  const dst = path.join(stage, lib);
  const have = await lstat(dst).then(
    () => true,
    () => false,
  );
  if (have) return;
  await mkdir(path.dirname(dst), { recursive: true });
  await copyFile(lib, dst); // follows symlinks: the guest gets the real file under the soname
  await chmod(dst, 0o755);
}

/** The sonames `binary` links against directly (its DT_NEEDED entries). */
async function neededSonames(binary: string): Promise<string[]> {
  const out = await run('readelf', ['-d', binary], { what: `readelf -d ${binary}`, hint: 'install binutils (apt-get install binutils)' });
  return [...out.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]!);
}

/**
 * crun with libsystemd replaced by a stub (libsystemd-stub.ts): the stub
 * under libsystemd's path, and only the libraries crun's other direct
 * dependencies need, so libsystemd's own (libgcrypt, the compressors) stay
 * out of the guest. A crun that does not link libsystemd is staged as is.
 */
async function stageCrun(stage: string, crun: string, workDir: string, onImage: boolean): Promise<void> {
  if (onImage) await symlink(`${NODE_IMAGE_MOUNT}/crun`, path.join(stage, 'usr/bin/crun'));
  else await placeExecutable(stage, crun, '/usr/bin/crun');
  const lddOut = await lddOf(crun);
  if (lddOut === undefined) return;
  const pathOf = new Map(parseLddEntries(lddOut).flatMap((e) => (e.soname ? [[e.soname, e.path] as const] : [])));
  const systemd = pathOf.get(LIBSYSTEMD_SONAME);
  const stub = systemd ? await buildLibsystemdStub(crun, workDir) : undefined;
  if (!systemd || !stub) {
    await stageLibs(stage, crun);
    return;
  }
  for (const soname of await neededSonames(crun)) {
    if (soname === LIBSYSTEMD_SONAME) continue;
    const lib = pathOf.get(soname);
    if (!lib) throw new Error(`ldd ${crun} does not resolve ${soname}`);
    await stageLib(stage, lib);
    await stageLibs(stage, lib);
  }
  await mkdir(path.dirname(path.join(stage, systemd)), { recursive: true });
  await copyFile(stub, path.join(stage, systemd));
  await chmod(path.join(stage, systemd), 0o755);
}

async function stageBusybox(stage: string, busybox: string): Promise<void> {
  if ((await lddOf(busybox)) !== undefined) {
    throw new Error(`${busybox} is not statically linked; install busybox-static (apt-get install busybox-static)`);
  }
  await copyFile(busybox, path.join(stage, 'bin/busybox'));
  await chmod(path.join(stage, 'bin/busybox'), 0o755);
  const list = await run(busybox, ['--list-full'], { what: `${busybox} --list-full`, hint: 'install busybox-static' });
  for (const entry of list.split('\n').map((l) => l.trim()).filter(Boolean)) {
    const name = path.basename(entry);
    if (name === 'busybox' || name.includes('/')) continue;
    const dirs = /(^|\/)sbin\//.test(entry) ? ['bin', 'sbin'] : ['bin'];
    for (const d of dirs) {
      const link = path.join(stage, d, name);
      const have = await lstat(link).then(
        () => true,
        () => false,
      );
      if (!have) await symlink('/bin/busybox', link);
    }
  }
  await writeFile(path.join(stage, 'init'), INIT_SH, { mode: 0o755 });
}

async function stageNodePty(stage: string, nodePtyDir: string): Promise<void> {
  const dst = path.join(stage, 'opt/hako/node_modules/node-pty');
  await mkdir(path.join(dst, 'build/Release'), { recursive: true });
  await copyFile(path.join(nodePtyDir, 'package.json'), path.join(dst, 'package.json'));
  await cp(path.join(nodePtyDir, 'lib'), path.join(dst, 'lib'), {
    recursive: true,
    filter: (src) => !/\.test\.js$|\.map$/.test(src),
  });
  const ptyNode = path.join(nodePtyDir, 'build/Release/pty.node');
  await stat(ptyNode).catch(() => {
    throw new Error(`${ptyNode} is missing; rebuild node-pty (npm rebuild node-pty)`);
  });
  await copyFile(ptyNode, path.join(dst, 'build/Release/pty.node'));
  await stageLibs(stage, ptyNode);
}

/** Character devices the kernel needs before rc.sh mounts devtmpfs (console for init's stdio). */
async function makeDevNodes(stage: string): Promise<void> {
  if (process.getuid?.() !== 0) return; // not root: the kernel warns, busybox init still works
  await run('mknod', ['-m', '600', path.join(stage, 'dev/console'), 'c', '5', '1']);
  await run('mknod', ['-m', '666', path.join(stage, 'dev/null'), 'c', '1', '3']);
}

/** Builds the staging tree from scratch in opts.dir. */
export async function buildStagingTree(opts: StageOptions): Promise<void> {
  const stage = opts.dir;
  await rm(stage, { recursive: true, force: true });
  for (const d of EMPTY_DIRS) await mkdir(path.join(stage, d), { recursive: true });
  await chmod(path.join(stage, 'tmp'), 0o1777);
  await chmod(path.join(stage, 'root'), 0o700);
  for (const [p, content] of Object.entries(ETC_FILES)) await writeFile(path.join(stage, p), content);
  await writeFile(path.join(stage, 'etc/hako/rc.sh'), RC_SH, { mode: 0o755 });
  await writeFile(path.join(stage, 'etc/hako/agent.sh'), AGENT_SH, { mode: 0o755 });
  await writeFile(path.join(stage, 'etc/hako/helper.sh'), HELPER_SH, { mode: 0o755 });
  await stageBusybox(stage, opts.busyboxBinary);
  await makeDevNodes(stage);
  if (opts.nodeAndCrunOnImage) {
    await stageLibs(stage, opts.nodeBinary);
    await mkdir(path.join(stage, NODE_IMAGE_MOUNT), { recursive: true });
    await symlink(`${NODE_IMAGE_MOUNT}/node`, path.join(stage, 'usr/bin/node'));
  } else {
    await stageBinary(stage, opts.nodeBinary, '/usr/bin/node', { strip: true });
  }
  await stageCrun(stage, opts.crunBinary, `${stage}.libsystemd-stub`, opts.nodeAndCrunOnImage === true);
  await rm(`${stage}.libsystemd-stub`, { recursive: true, force: true });
  await copyFile(opts.agentBundle, path.join(stage, 'opt/hako/hako-agent.js'));
  await stageNodePty(stage, opts.nodePtyDir);
  if (opts.modules) await stageModules(opts.modules.kernelRoot, opts.modules.release, stage);
}

/**
 * The node image's tree (mounted on NODE_IMAGE_MOUNT in the guest): node,
 * stripped, as `<dir>/node`, and crun as `<dir>/crun`.
 *
 * crun is here, not in the tmpfs root, because of how it guards against
 * CVE-2019-5736: unless its binary is on a read-only filesystem, every crun
 * call copies the binary into a sealed memfd and re-executes itself from
 * there (a tmpfs file even fails its read-only check first: tmpfs files
 * answer F_GET_SEALS). Under TCG each copy is new guest code that QEMU
 * translates again: ~2,400 of the ~11,700 blocks a warm VM translated for a
 * pod start were crun's, already translated for its previous call
 * (docs/benchmarks.md, thirteenth stop). On erofs the check passes and crun
 * runs from the image's page cache, the same pages every time.
 */
export async function stageNodeImageTree(dir: string, nodeBinary: string, crunBinary: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  await placeExecutable(dir, nodeBinary, '/node', { strip: true });
  await placeExecutable(dir, crunBinary, '/crun');
}

/** All paths in the tree relative to it ("." first), sorted bytewise for a deterministic archive. */
export async function listTree(root: string): Promise<string[]> {
  const out: string[] = ['.'];
  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(path.join(root, rel), { withFileTypes: true });
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      out.push(`./${r}`);
      if (e.isDirectory()) await walk(r);
    }
  };
  await walk('');
  return out.sort((a, b) => (a === '.' ? -1 : b === '.' ? 1 : Buffer.compare(Buffer.from(a), Buffer.from(b))));
}
