#!/usr/bin/env bash
# make demo: run a busybox OCI bundle in a VM and show that it has its own kernel,
# then a two-container pod through containerd's CRI (scripts/demo-pod.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/hako-demo-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin"
cp /bin/busybox "$work/rootfs/bin/busybox"
for a in sh uname cat echo; do ln -s busybox "$work/rootfs/bin/$a"; done
mkdir -p "$work/rootfs/"{proc,sys,dev,tmp,etc}
cat > "$work/config.json" <<'JSON'
{
  "ociVersion": "1.0.2",
  "process": { "terminal": false, "user": {"uid": 0, "gid": 0},
    "args": ["/bin/sh", "-c", "echo \"guest kernel: $(uname -r)\""],
    "env": ["PATH=/bin"], "cwd": "/" },
  "root": { "path": "rootfs" },
  "mounts": [ {"destination": "/proc", "type": "proc", "source": "proc"} ],
  "linux": { "namespaces": [ {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"} ] }
}
JSON
echo "host kernel:  $(uname -r)"
start=$(date +%s%N)
build/bin/hako run --bundle "$work" "demo-$$"
end=$(date +%s%N)
echo "hako run took $(( (end - start) / 1000000 )) ms (VM boot, agent, container, teardown)"
build/bin/hako check
echo
echo "a Kubernetes pod through containerd's CRI (private containerd, CNI bridge, handler hako):"
HAKO_TEST_STATE_DIR=/run/hako-demo node --import tsx scripts/demo-pod.ts
