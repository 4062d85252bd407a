import { test } from "node:test";
import assert from "node:assert/strict";
import { defaultConfig, type QemuConfig } from "../../src/runtime/config.js";
import type { VmSpec } from "../../src/hypervisor/hypervisor.js";
import {
  buildQemuArgs,
  hostTscKhz,
  kernelCommandLine,
  machineArgs,
  nicArgs,
  qemuEscape,
  transportFor,
} from "../../src/hypervisor/qemu/command-line.js";
import { launchCommand } from "../../src/hypervisor/qemu/qemu-hypervisor.js";
import { buildProbeArgs } from "../../src/hypervisor/accel-probe.js";

const paths = { qmpSocket: "/run/vm/qmp.sock", agentSocket: "/run/vm/agent.sock", pidFile: "/run/vm/qemu.pid" };

function qemuCfg(over: Partial<QemuConfig> = {}): QemuConfig {
  return { ...defaultConfig().hypervisor.qemu, ...over };
}

function spec(over: Partial<VmSpec> = {}): VmSpec {
  return {
    id: "sb1",
    runDir: "/run/vm",
    accel: "tcg",
    vcpus: 1,
    memoryMiB: 512,
    kernel: "/g/vmlinux",
    initrd: "/g/rootfs.initrd",
    kernelParams: [],
    sharedDirs: [],
    consoleLog: "/run/vm/console.log",
    ...over,
  };
}

const BASE = "console=ttyS0 reboot=t panic=-1 rdinit=/init tsc=reliable no_timer_check noreplace-smp cryptomgr.notests";

test("microvm + tcg: exact argv with virtio-mmio devices", () => {
  const args = buildQemuArgs(spec(), qemuCfg(), paths, { hostTscKhz: 2596148 });
  assert.deepEqual(args, [
    "-name", "hako-sb1",
    "-machine", "microvm,pit=off",
    "-accel", "tcg,tb-size=64",
    "-cpu", "qemu64,+arat",
    "-m", "512M",
    "-smp", "1",
    "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-display", "none",
    "-kernel", "/g/vmlinux",
    "-initrd", "/g/rootfs.initrd",
    "-append", `${BASE} quiet tsc_early_khz=2596148 norandmaps mitigations=off lockdown=confidentiality`,
    "-chardev", "file,id=console,path=/run/vm/console.log",
    "-serial", "chardev:console",
    "-qmp", "unix:/run/vm/qmp.sock,server=on,wait=off",
    "-device", "virtio-serial-device,id=vser0",
    "-chardev", "socket,id=agent,path=/run/vm/agent.sock,server=on,wait=off",
    "-device", "virtserialport,bus=vser0.0,chardev=agent,name=agent.channel.0",
    "-object", "rng-random,id=rng0,filename=/dev/urandom",
    "-device", "virtio-rng-device,rng=rng0",
    "-device", "virtio-balloon-device,free-page-reporting=on",
    "-pidfile", "/run/vm/qemu.pid",
  ]);
});

test("q35 + kvm: -cpu host, pci devices, no tsc_early_khz, erofs image and shared dirs", () => {
  const args = buildQemuArgs(
    spec({
      accel: "kvm",
      vcpus: 2,
      memoryMiB: 2048,
      initrd: undefined,
      image: "/g/root.erofs",
      kernelParams: ["hako.debug=1"],
      verboseConsole: true,
      sharedDirs: [
        { tag: "rootfs0", hostPath: "/bundles/a/rootfs" },
        { tag: "ro,tag", hostPath: "/data/x,y", readonly: true },
      ],
    }),
    qemuCfg({ machine_type: "q35", kernel_params: " loglevel=4  8250.nr_uarts=1 " }),
    paths,
    { hostTscKhz: 1 },
  );
  assert.deepEqual(args, [
    "-name", "hako-sb1",
    "-machine", "q35",
    "-accel", "kvm",
    "-cpu", "host",
    "-m", "2048M",
    "-smp", "2",
    "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-display", "none",
    "-kernel", "/g/vmlinux",
    "-append", `${BASE} root=/dev/vda rootfstype=erofs ro init=/init lockdown=confidentiality loglevel=4 8250.nr_uarts=1 hako.debug=1`,
    "-chardev", "file,id=console,path=/run/vm/console.log",
    "-serial", "chardev:console",
    "-qmp", "unix:/run/vm/qmp.sock,server=on,wait=off",
    "-drive", "file=/g/root.erofs,if=none,id=rootfs,format=raw,readonly=on",
    "-device", "virtio-blk-pci,drive=rootfs",
    "-device", "virtio-serial-pci,id=vser0",
    "-chardev", "socket,id=agent,path=/run/vm/agent.sock,server=on,wait=off",
    "-device", "virtserialport,bus=vser0.0,chardev=agent,name=agent.channel.0",
    "-fsdev", "local,id=fs0,path=/bundles/a/rootfs,security_model=none",
    "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=rootfs0",
    "-fsdev", "local,id=fs1,path=/data/x,,y,security_model=none,readonly=on",
    "-device", "virtio-9p-pci,fsdev=fs1,mount_tag=ro,,tag",
    "-object", "rng-random,id=rng0,filename=/dev/urandom",
    "-device", "virtio-rng-pci,rng=rng0",
    "-device", "virtio-balloon-pci,free-page-reporting=on",
    "-pidfile", "/run/vm/qemu.pid",
  ]);
});

test("microvm with the pci transport turns on pcie and uses -pci devices", () => {
  const args = buildQemuArgs(spec({ sharedDirs: [{ tag: "t", hostPath: "/h" }] }), qemuCfg({ tb_size: 32, cpu_model: "max" }), paths, {
    hostTscKhz: 1000,
    transport: "pci",
  });
  assert.deepEqual(args.slice(2, 8), ["-machine", "microvm,pit=off,pcie=on", "-accel", "tcg,tb-size=32", "-cpu", "max"]);
  const devices = args.filter((_, i) => args[i - 1] === "-device");
  assert.deepEqual(devices, [
    "virtio-serial-pci,id=vser0",
    "virtserialport,bus=vser0.0,chardev=agent,name=agent.channel.0",
    "virtio-9p-pci,fsdev=fs0,mount_tag=t",
    "virtio-rng-pci,rng=rng0",
    "virtio-balloon-pci,free-page-reporting=on",
  ]);
});

test("free_page_reporting = false: no balloon device", () => {
  const args = buildQemuArgs(spec({}), qemuCfg({ free_page_reporting: false }), paths, { hostTscKhz: 1000 });
  assert.ok(!args.some((a) => a.includes("balloon")));
});

test("TCG-only guest options (tcg_norandmaps, tcg_mitigations_off): under TCG only, and only when on", () => {
  const options = [
    ["tcg_norandmaps", "norandmaps", "KVM has no translation cache: keep ASLR"],
    ["tcg_mitigations_off", "mitigations=off", "under KVM the guest's mitigations guard a real CPU: they stay"],
  ] as const;
  for (const [key, word, kvmWhy] of options) {
    const append = (accel: "tcg" | "kvm", on: boolean): string[] => {
      const args = buildQemuArgs(spec({ accel }), qemuCfg({ [key]: on }), paths, { hostTscKhz: 1000 });
      return args[args.indexOf("-append") + 1]!.split(" ");
    };
    assert.ok(append("tcg", true).includes(word), key);
    assert.ok(!append("tcg", false).includes(word), key);
    assert.ok(!append("kvm", true).includes(word), kvmWhy);
  }
});

test("guest_lockdown: lockdown=<level> under any accelerator, nothing for none", () => {
  const append = (accel: "tcg" | "kvm", level: QemuConfig["guest_lockdown"]): string[] => {
    const args = buildQemuArgs(spec({ accel }), qemuCfg({ guest_lockdown: level }), paths, { hostTscKhz: 1000 });
    return args[args.indexOf("-append") + 1]!.split(" ");
  };
  for (const accel of ["tcg", "kvm"] as const) {
    assert.ok(append(accel, "confidentiality").includes("lockdown=confidentiality"), accel);
    assert.ok(append(accel, "integrity").includes("lockdown=integrity"), accel);
    assert.ok(!append(accel, "none").some((w) => w.startsWith("lockdown")), accel);
  }
  assert.equal(defaultConfig().hypervisor.qemu.guest_lockdown, "confidentiality");
  // The probe (and the benchmark's floor, which boots its argv) does the same kernel work.
  const probe = (level: QemuConfig["guest_lockdown"]): string[] => {
    const args = buildProbeArgs("tcg", { qemu: qemuCfg({ guest_lockdown: level }), kernel: "/g/vmlinux", initrd: "/g/rootfs.initrd", hostTscKhz: 1000 });
    return args[args.indexOf("-append") + 1]!.split(" ");
  };
  assert.ok(probe("confidentiality").includes("lockdown=confidentiality"));
  assert.ok(!probe("none").some((w) => w.startsWith("lockdown")));
});

test("transport follows the machine type; q35 has no mmio", () => {
  assert.equal(transportFor("microvm"), "mmio");
  assert.equal(transportFor("microvm", "pci"), "pci");
  assert.equal(transportFor("q35"), "pci");
  assert.throws(() => transportFor("q35", "mmio"), /virtio-mmio devices are not available on -machine q35/);
  assert.throws(() => buildQemuArgs(spec(), qemuCfg({ machine_type: "pc" }), paths, { hostTscKhz: 1 }), /machine_type = "pc" is not supported/);
});

test("paths with commas are escaped for QEMU option parsing", () => {
  const args = buildQemuArgs(spec({ id: "a,b", consoleLog: "/r,1/console.log" }), qemuCfg(), { ...paths, qmpSocket: "/r,1/q.sock" }, { hostTscKhz: 5 });
  assert.ok(args.includes("hako-a,,b"));
  assert.ok(args.includes("file,id=console,path=/r,,1/console.log"));
  assert.ok(args.includes("unix:/r,,1/q.sock,server=on,wait=off"));
  assert.equal(qemuEscape("a,,b"), "a,,,,b");
});

test("kernel command line: tsc_early_khz only on microvm + tcg, quiet unless verbose", () => {
  assert.deepEqual(kernelCommandLine({ accel: "kvm", machine: "microvm", hostTscKhz: 7 }).slice(-1), ["quiet"]);
  assert.deepEqual(kernelCommandLine({ accel: "tcg", machine: "q35", hostTscKhz: 7 }).slice(-1), ["quiet"]);
  assert.deepEqual(kernelCommandLine({ accel: "tcg", machine: "microvm", verboseConsole: true, hostTscKhz: 7, extraParams: ["x=1"] }).slice(-2), [
    "tsc_early_khz=7",
    "x=1",
  ]);
});

test("hostTscKhz parses cpu MHz and rejects a cpuinfo without it", () => {
  assert.equal(hostTscKhz("processor\t: 0\ncpu MHz\t\t: 2596.148\ncpu MHz\t\t: 1.0\n"), 2596148);
  assert.throws(() => hostTscKhz("processor : 0\n"), /cpu MHz/);
  assert.ok(hostTscKhz() > 0);
});

test("microvm drops ACPI only for the minimal kernel named in the image manifest", async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const { kernelWantsAcpi } = await import("../../src/hypervisor/guest-kernel.js");
  const dir = mkdtempSync(join(tmpdir(), "hako-test-manifest-"));
  try {
    writeFileSync(join(dir, "manifest.json"), JSON.stringify({ kernels: { generic: { path: "/elsewhere/vmlinux-generic" }, minimal: { path: "/elsewhere/vmlinux-minimal" } } }));
    assert.equal(kernelWantsAcpi(join(dir, "vmlinux-minimal")), false);
    assert.equal(kernelWantsAcpi(join(dir, "vmlinux-generic")), true);
    assert.equal(kernelWantsAcpi("/nowhere/vmlinux"), true);
    assert.deepEqual(machineArgs("microvm", "mmio", "tcg", { tb_size: 64, cpu_model: "qemu64" }, false).slice(0, 2), ["-machine", "microvm,acpi=off"], "the minimal kernel keeps the PIT");
    assert.deepEqual(machineArgs("microvm", "mmio", "tcg", { tb_size: 64, cpu_model: "qemu64" }, true).slice(0, 2), ["-machine", "microvm,pit=off"], "the Debian kernel boots without one");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("pod network: one tap netdev + virtio-net per NIC, after the shares and before the rng (mmio and pci)", () => {
  const network = {
    netnsPath: "/var/run/netns/cni-1234",
    nics: [
      { tapName: "tap0_hako", mac: "0A:58:0A:F4:00:05" },
      { tapName: "tap1_hako", mac: "02:42:ac:11:00:02" },
    ],
  };
  const mmio = buildQemuArgs(spec({ network, sharedDirs: [{ tag: "t", hostPath: "/h" }] }), qemuCfg(), paths, { hostTscKhz: 1 });
  const at = mmio.indexOf("-netdev");
  assert.deepEqual(mmio.slice(at - 4, at + 10), [
    "-fsdev", "local,id=fs0,path=/h,security_model=none",
    "-device", "virtio-9p-device,fsdev=fs0,mount_tag=t",
    "-netdev", "tap,id=net0,ifname=tap0_hako,script=no,downscript=no",
    "-device", "virtio-net-device,netdev=net0,mac=0a:58:0a:f4:00:05",
    "-netdev", "tap,id=net1,ifname=tap1_hako,script=no,downscript=no",
    "-device", "virtio-net-device,netdev=net1,mac=02:42:ac:11:00:02",
    "-object", "rng-random,id=rng0,filename=/dev/urandom",
  ]);
  const q35 = buildQemuArgs(spec({ network }), qemuCfg({ machine_type: "q35" }), paths, { hostTscKhz: 1 });
  assert.ok(q35.includes("virtio-net-pci,netdev=net0,mac=0a:58:0a:f4:00:05"));
  // The netns path is not QEMU's business: it is where QEMU is started, not an argument.
  assert.ok(!mmio.some((a) => a.includes("cni-1234")));
});

test("without a network there is no -netdev and no virtio-net", () => {
  const args = buildQemuArgs(spec(), qemuCfg(), paths, { hostTscKhz: 1 });
  assert.ok(!args.includes("-netdev"));
  assert.ok(!args.some((a) => a.startsWith("virtio-net")));
});

test("NIC arguments are validated: MAC format, unicast MAC, tap name", () => {
  assert.deepEqual(nicArgs({ tapName: "tap3_hako", mac: "02:00:00:00:00:01" }, 3, "virtio-net-device"), [
    "-netdev", "tap,id=net3,ifname=tap3_hako,script=no,downscript=no",
    "-device", "virtio-net-device,netdev=net3,mac=02:00:00:00:00:01",
  ]);
  assert.throws(() => nicArgs({ tapName: "tap0_hako", mac: "02:00:00:00:01" }, 0, "d"), /NIC 0 has an invalid MAC address/);
  assert.throws(() => nicArgs({ tapName: "tap0_hako", mac: "01:00:5e:00:00:01" }, 0, "d"), /multicast MAC/);
  assert.throws(() => nicArgs({ tapName: "tap0,x", mac: "02:00:00:00:00:01" }, 0, "d"), /invalid tap name/);
  assert.throws(() => nicArgs({ tapName: "a-very-long-tap-name", mac: "02:00:00:00:00:01" }, 0, "d"), /invalid tap name/);
  assert.throws(() => buildQemuArgs(spec({ network: { netnsPath: "/n", nics: [{ tapName: "t", mac: "zz" }] } }), qemuCfg(), paths, { hostTscKhz: 1 }), /invalid MAC/);
});

test("QEMU is started through nsenter --net=<netns> only when the VM has a network", () => {
  assert.deepEqual(launchCommand("/usr/bin/qemu-system-x86_64", ["-m", "512M"]), { file: "/usr/bin/qemu-system-x86_64", argv: ["-m", "512M"] });
  assert.deepEqual(launchCommand("/usr/bin/qemu-system-x86_64", ["-m", "512M"], { netnsPath: "/var/run/netns/cni-1" }), {
    file: "nsenter",
    argv: ["--net=/var/run/netns/cni-1", "--", "/usr/bin/qemu-system-x86_64", "-m", "512M"],
  });
});

test("QEMU is started through hako-ksm-exec, on or off, outside nsenter (the setting survives both execs)", () => {
  assert.deepEqual(launchCommand("/usr/bin/qemu-system-x86_64", ["-m", "512M"], { ksm: { exec: "/l/hako-ksm-exec", mergeAll: true } }), {
    file: "/l/hako-ksm-exec",
    argv: ["on", "/usr/bin/qemu-system-x86_64", "-m", "512M"],
  });
  assert.deepEqual(launchCommand("/usr/bin/qemu-system-x86_64", ["-m", "512M"], { netnsPath: "/n", ksm: { exec: "/l/hako-ksm-exec", mergeAll: false } }), {
    file: "/l/hako-ksm-exec",
    argv: ["off", "nsenter", "--net=/n", "--", "/usr/bin/qemu-system-x86_64", "-m", "512M"],
  });
});

test("templating: a template's RAM is a shared file; a clone maps it privately and waits for the incoming state", () => {
  const tpl = buildQemuArgs(spec({ memoryFile: { path: "/run/t/memory", shared: true } }), qemuCfg(), paths, { hostTscKhz: 1000 });
  assert.match(tpl[tpl.indexOf("-machine") + 1]!, /,memory-backend=mem$/);
  assert.ok(tpl.includes("memory-backend-file,id=mem,size=512M,mem-path=/run/t/memory,share=on"));
  assert.ok(!tpl.includes("-incoming"));
  assert.ok(!tpl.some((a) => a.includes("balloon")), "no free page reporting with file-backed RAM");
  const clone = buildQemuArgs(spec({ memoryFile: { path: "/run/t/memory", shared: false }, restoreState: "/run/t/state" }), qemuCfg(), paths, { hostTscKhz: 1000 });
  assert.ok(clone.includes("memory-backend-file,id=mem,size=512M,mem-path=/run/t/memory,share=off"));
  assert.deepEqual(clone.slice(clone.indexOf("-incoming"), clone.indexOf("-incoming") + 2), ["-incoming", "defer"]);
  // The translation cache is not migrated: a clone may have a smaller one than the template.
  const small = buildQemuArgs(spec({ memoryFile: { path: "/run/t/memory", shared: false }, restoreState: "/run/t/state", tcgCacheMiB: 32 }), qemuCfg(), paths, { hostTscKhz: 1000 });
  assert.equal(small[small.indexOf("-accel") + 1], "tcg,tb-size=32");
  assert.equal(clone[clone.indexOf("-accel") + 1], "tcg,tb-size=64");
  assert.throws(() => buildQemuArgs(spec({ restoreState: "/run/t/state" }), qemuCfg(), paths, { hostTscKhz: 1000 }), /needs a private memory file/);
});

test("node's own image with the initrd: the only disk, /dev/vda, mounted by the guest (hako.node_image)", () => {
  const args = buildQemuArgs(spec({ nodeImage: "/g/node,1.erofs" }), qemuCfg(), paths, { hostTscKhz: 2596148 });
  const drive = args.indexOf("-drive");
  assert.deepEqual(args.slice(drive, drive + 4), ["-drive", "file=/g/node,,1.erofs,if=none,id=nodeimg,format=raw,readonly=on", "-device", "virtio-blk-device,drive=nodeimg"]);
  assert.equal(args.filter((a) => a === "-drive").length, 1);
  assert.match(args[args.indexOf("-append") + 1]!, / hako\.node_image=\/dev\/vda( |$)/);
  // An erofs root is /dev/vda itself: no node image beside it.
  const root = buildQemuArgs(spec({ initrd: undefined, image: "/g/root.erofs", nodeImage: "/g/node.erofs" }), qemuCfg(), paths, { hostTscKhz: 2596148 });
  assert.equal(root.filter((a) => a === "-drive").length, 1);
  assert.doesNotMatch(root[root.indexOf("-append") + 1]!, /hako\.node_image/);
});
