# `containerd-shim-hako-v2 ... start` without node start-up of its own.
#
# Part of the containerd-shim-hako-v2 launcher (scripts/build.mjs puts it
# between finding the launcher's directory and `exec node`). containerd runs
# `start` for every task: the pod's sandbox and then each container. A node
# `start` cost a node start-up (~46 ms here) on every task, plus, for the
# pod's first task, the wait for the daemon it spawns (a second node).
#
# This does what src/shim/start.ts and src/shim/address.ts do: group = the
# io.containerd.runc.v2.group or io.kubernetes.cri.sandbox-id annotation of
# <bundle>/config.json, else the task id; address =
# unix://<socket dir>/hex(sha256("<-address>/<namespace>/<group>")). If a
# socket listens there (/proc/net/unix), the pod's shim runs. Otherwise a
# spare daemon waiting for this containerd and namespace (src/shim/spare.ts)
# takes the pod, or it spawns the daemon (`... -socket ADDRESS serve`, its own session, cwd the
# bundle, output on the bundle's `log` fifo, containerd's runtime options on
# its stdin for it to decode) and waits until it listens. Then it writes
# <bundle>/address and prints the address. Anything it does not recognise
# (other flag forms, characters outside [A-Za-z0-9._-], paths node's path.join
# would normalise, an empty or escaped annotation value, no `log` fifo or no
# setsid) returns 1: node then does the whole `start`, as before.
# test/unit/shim-start-fast-path.test.ts checks it against the node code.
hako_fast_start() {
  hako_ns= hako_addr= hako_id= hako_bundle=$PWD hako_action= hako_publish= hako_debug=
  while [ $# -gt 0 ]; do
    case $1 in
      -namespace | --namespace | -address | --address | -id | --id | -bundle | --bundle | -publish-binary | --publish-binary)
        [ $# -ge 2 ] || return 1
        case $1 in
          *namespace) hako_ns=$2 ;;
          *address) hako_addr=$2 ;;
          *id) hako_id=$2 ;;
          *bundle) hako_bundle=$2 ;;
          *binary) hako_publish=$2 ;;
        esac
        shift 2
        ;;
      -debug | --debug) hako_debug=-debug; shift ;;
      start) [ $# -eq 1 ] || return 1; hako_action=start; shift ;;
      *) return 1 ;;
    esac
  done
  [ "$hako_action" = start ] || return 1
  for hako_tool in grep sha256sum mv setsid cat rm rmdir sleep; do
    command -v "$hako_tool" > /dev/null || return 1
  done
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
    case $hako_found in *"\"$hako_key\":"*) ;; *) continue ;; esac
    # Its first occurrence: after the key, spaces, then the quoted value.
    hako_value=${hako_found#*"\"$hako_key\":"}
    hako_value=${hako_value#"${hako_value%%[! ]*}"}
    hako_value=${hako_value#\"}
    hako_value=${hako_value%%\"*}
    case $hako_value in "" | . | .. | *[!A-Za-z0-9._-]*) return 1 ;; esac
    hako_group=$hako_value
    break
  done
  [ -n "$hako_group" ] || hako_group=$hako_id

  hako_sum=$(printf '%s' "$hako_addr/$hako_ns/$hako_group" | sha256sum) || return 1
  hako_sock=$hako_dir/${hako_sum%% *}
  [ ${#hako_sock} -le 106 ] || return 1
  if ! hako_listening; then
    # No shim serves the group yet. A spare (src/shim/spare.ts) takes the
    # pod if one waits; else, or if it fails, spawn the daemon, as start.ts
    # does (its own session, cwd the bundle, output on containerd's `log`
    # fifo), and hand it containerd's runtime options: it reads them from its
    # stdin (HAKO_SHIM_OPTIONS_ON_STDIN), node decodes protobuf, sh does not.
    [ -p "$hako_bundle/log" ] || return 1
    hako_req=
    hako_claim_spare || return 1
    if [ -n "$hako_req" ]; then
      if hako_wait_listening 200 0.01; then
        rm -f "$hako_req" "$hako_req.opts"
        rmdir "$hako_spares" 2> /dev/null # if that was the last spare; the next one makes it again
      else
        [ -n "$hako_gone" ] || kill -9 "$hako_pid" 2> /dev/null
        exec 0< "$hako_req.opts"
        rm -f "$hako_req" "$hako_req.opts" "$hako_spares/claimed-$hako_pid"
        hako_req=
      fi
    fi
    if [ -z "$hako_req" ]; then
      exec 3<&0
      (cd "$hako_bundle" && export HAKO_SHIM_OPTIONS_ON_STDIN=1 && exec setsid "$hako_here/../lib/hako/hako-ksm-exec" on node "$hako_here/../lib/hako/containerd-shim-hako-v2.mjs" \
        -namespace "$hako_ns" -address "$hako_addr" ${hako_publish:+-publish-binary "$hako_publish"} -id "$hako_id" -bundle "$hako_bundle" \
        -socket "unix://$hako_sock" $hako_debug serve <&3 3<&- > "$hako_bundle/log" 2>&1) &
      hako_pid=$!
      exec 3<&-
      if ! hako_wait_listening 500 0.02; then
        if [ -n "$hako_gone" ]; then
          echo "containerd-shim-hako-v2 start: shim daemon for $hako_id failed to start (its messages are in the shim log)" >&2
        else
          kill -9 "$hako_pid" 2> /dev/null
          echo "containerd-shim-hako-v2 start: shim daemon for $hako_id did not listen on unix://$hako_sock within 10000 ms" >&2
        fi
        exit 1
      fi
    fi
  fi
  printf '%s' "unix://$hako_sock" > "$hako_bundle/.address.$$.tmp" || return 1
  mv -f "$hako_bundle/.address.$$.tmp" "$hako_bundle/address" || return 1
  printf '%s' "unix://$hako_sock"
  exit 0
}
# A listening unix socket is listed with its path, flags 00010000 and state 01.
hako_listening() { grep -q " 00010000 0001 01 [0-9]* $hako_sock\$" /proc/net/unix; }
# Waits until the group's socket listens: at most $1 polls, $2 s apart, while
# process $hako_pid lives. Fails with hako_gone set if it died first (a
# daemon that lost the race against another start exits: the winner serves).
hako_wait_listening() {
  hako_gone= hako_polls=0
  until hako_listening; do
    hako_stat=
    read -r hako_stat 2> /dev/null < "/proc/$hako_pid/stat"
    case $hako_stat in
      "" | *") Z "*)
        hako_listening && return 0
        hako_gone=1
        return 1
        ;;
    esac
    hako_polls=$((hako_polls + 1))
    [ $hako_polls -le "$1" ] || return 1
    sleep "$2"
  done
}
# Claims a waiting spare of this containerd and namespace, if there is one:
# renames its fifo (one claimer wins), writes the request (the argv a spawned
# daemon would get, NUL-separated, and the runtime options from stdin) and
# wakes it. Sets hako_req and hako_pid; leaves hako_req empty if none waits.
hako_claim_spare() {
  hako_spares=$(printf '%s' "$hako_addr/$hako_ns" | sha256sum) || return 1
  hako_spares=$hako_dir/hako-spare-${hako_spares%% *}
  [ -d "$hako_spares" ] || return 0
  for hako_ready in "$hako_spares"/ready-*; do
    [ -p "$hako_ready" ] || continue
    hako_pid=${hako_ready##*/ready-}
    case $hako_pid in "" | *[!0-9]*) continue ;; esac
    [ -d "/proc/$hako_pid" ] || continue # a spare that was killed: the next one takes its slot
    mv "$hako_ready" "$hako_spares/claimed-$hako_pid" 2> /dev/null || continue
    # From here on stdin is in the .opts file: a spare that does not take
    # the request is waited for, then the daemon spawned reads that file.
    hako_req=$hako_spares/req-$hako_pid
    cat > "$hako_req.opts"
    printf '%s\0' -namespace "$hako_ns" -address "$hako_addr" ${hako_publish:+-publish-binary "$hako_publish"} -id "$hako_id" \
      -bundle "$hako_bundle" -socket "unix://$hako_sock" $hako_debug serve > "$hako_req" &&
      printf '%s\n' "$hako_req" 1<> "$hako_spares/claimed-$hako_pid"
    return 0
  done
  return 0
}
case $* in *start) hako_fast_start "$@" ;; esac
