# The `start` of a task whose pod's shim already runs, without node.
#
# Part of the containerd-shim-hako-v2 launcher (scripts/build.mjs puts it
# between finding the launcher's directory and `exec node`). containerd runs
# `containerd-shim-hako-v2 ... start` for every task: the pod's sandbox and
# then each container. Only the first needs the node program (it spawns the
# daemon); for the others `start` only has to answer the address of the shim
# that serves the pod, ~40 ms of node start-up on every container start.
#
# This does what src/shim/start.ts and src/shim/address.ts do in that case:
# group = the io.containerd.runc.v2.group or io.kubernetes.cri.sandbox-id
# annotation of <bundle>/config.json, else the task id; address =
# unix://<socket dir>/hex(sha256("<-address>/<namespace>/<group>")); if a
# socket listens there (a listening unix socket is listed with its path, flags
# 00010000 and state 01, in /proc/net/unix), write <bundle>/address and print
# the address. Anything it does not recognise (other flag forms, odd
# characters, a path node's path.join would normalise, no listener) returns 1:
# node then does the whole `start`, as before. test/unit/shim-start-fast-path.test.ts
# checks it against the node code.
hako_fast_start() {
  hako_ns= hako_addr= hako_id= hako_bundle=$PWD hako_action=
  while [ $# -gt 0 ]; do
    case $1 in
      -namespace | --namespace | -address | --address | -id | --id | -bundle | --bundle | -publish-binary | --publish-binary)
        [ $# -ge 2 ] || return 1
        case $1 in
          *namespace) hako_ns=$2 ;;
          *address) hako_addr=$2 ;;
          *id) hako_id=$2 ;;
          *bundle) hako_bundle=$2 ;;
        esac
        shift 2
        ;;
      -debug | --debug) shift ;;
      start) [ $# -eq 1 ] || return 1; hako_action=start; shift ;;
      *) return 1 ;;
    esac
  done
  [ "$hako_action" = start ] || return 1
  hako_dir=${HAKO_SHIM_SOCKET_DIR:-/run/containerd/s}
  for hako_name in "$hako_ns" "$hako_id"; do
    case $hako_name in "" | . | .. | *[!A-Za-z0-9._-]*) return 1 ;; esac
  done
  for hako_path in "$hako_addr" "$hako_dir" "$hako_bundle"; do
    case $hako_path in /*) ;; *) return 1 ;; esac
    case $hako_path in *//* | */./* | */../* | */. | */.. | */) return 1 ;; esac
  done
  [ -r "$hako_bundle/config.json" ] || return 1

  # The first of the two annotations that is set, in node's order. A value
  # that is empty or has other characters (escapes, quotes): node decides.
  hako_found=$(grep -o -e '"io\.containerd\.runc\.v2\.group": *"[^"]*"' -e '"io\.kubernetes\.cri\.sandbox-id": *"[^"]*"' "$hako_bundle/config.json")
  hako_group=
  for hako_key in io.containerd.runc.v2.group io.kubernetes.cri.sandbox-id; do
    while IFS= read -r hako_line; do
      case $hako_line in "\"$hako_key\":"*) ;; *) continue ;; esac
      hako_value=${hako_line#*:}
      hako_value=${hako_value#"${hako_value%%[! ]*}"}
      hako_value=${hako_value#\"}
      hako_value=${hako_value%\"}
      case $hako_value in "" | . | .. | *[!A-Za-z0-9._-]*) return 1 ;; esac
      hako_group=$hako_value
      break
    done <<EOF
$hako_found
EOF
    [ -z "$hako_group" ] || break
  done
  [ -n "$hako_group" ] || hako_group=$hako_id

  hako_sum=$(printf '%s' "$hako_addr/$hako_ns/$hako_group" | sha256sum) || return 1
  hako_sock=$hako_dir/${hako_sum%% *}
  [ ${#hako_sock} -le 106 ] || return 1
  grep -q " 00010000 0001 01 [0-9]* $hako_sock\$" /proc/net/unix || return 1
  printf '%s' "unix://$hako_sock" > "$hako_bundle/.address.$$.tmp" || return 1
  mv -f "$hako_bundle/.address.$$.tmp" "$hako_bundle/address" || return 1
  printf '%s' "unix://$hako_sock"
  exit 0
}
case $* in *start) hako_fast_start "$@" ;; esac
