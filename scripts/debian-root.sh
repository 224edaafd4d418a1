#!/usr/bin/env bash
# Runs torch-early-exit's build and tests against another Debian's LibTorch on a host that has
# LibTorch 1.13 (Debian 12): inside a root file system of that Debian with its libtorch-dev and
# python3-torch. One script for every root; the suite names it:
#   trixie   Debian 13: LibTorch and PyTorch 2.6 (Python 3.13, Node 20)
#   sid      Debian unstable (a frozen snapshot on this mirror): LibTorch and PyTorch 2.14
#            (Python 3.14, Node 24, GCC 16)
#   trixie-arm64  Debian 13 with arm64 as a second architecture: the cross compiler, LibTorch
#            2.6's arm64 libraries and headers, and qemu-user to run arm64 programs
#            (scripts/arm64-smoke.sh builds and runs there)
#
#   bash scripts/debian-root.sh SUITE build        make the root (once; later calls reuse it)
#   bash scripts/debian-root.sh SUITE run 'CMD'    run CMD in a copy of this repository inside it
#   bash scripts/debian-root.sh SUITE test         = run 'bash scripts/setup.sh && npm test'
#   bash scripts/debian-root.sh exchange SUITE...  fixtures and prebuilt binaries between the host
#                                                  and every root named, each side to every other
#   bash scripts/debian-root.sh host-tools         the host's debootstrap and rsync, installed now,
#                                                  so that roots can then be made side by side
#
# Environment:
#   TEE_ROOTS             where the roots live (default /var/cache/torch-early-exit), one folder
#                         per suite, outside the repository so that git, npm pack and jest never
#                         see them.
#   TEE_DEBIAN_MIRROR     the Debian mirror (default: the first URIs: in the host's
#                         /etc/apt/sources.list.d/debian.sources).
#   TEE_COPY_BACK         space-separated paths, relative to the repository, to copy from the
#                         copy inside the root back into this checkout after CMD succeeded,
#                         e.g. "prebuilds". Copied without --delete: the host's own files
#                         (the 1.13 binary) stay.
#
# Needs root (chroot, mount). Two calls at once on one root are serialised with a lock.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOTS=${TEE_ROOTS:-/var/cache/torch-early-exit}
ROOTS=${ROOTS%/}
SUITES=(trixie sid trixie-arm64)
# Inside the root the repository is a persistent copy, not a bind mount of this checkout:
# node_modules/, build/, dist/, test/fixtures/ and prebuilds/ made there (by that Debian's Node,
# LibTorch and PyTorch) must not overwrite the host's 1.13 ones, and are reused between runs.
COPY_IN_ROOT=/work/repo
# The list of files the last sync copied, to delete in the copy what was deleted here.
SYNC_LIST_IN_ROOT=/work/.repo-files
GUEST_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

# What the root needs, each for a reason:
#   libdnnl-dev                          oneDNN 3 headers, for the oneDNN chains (native/onednn/)
#   libtorch-dev, libopenblas0-pthread   LibTorch to build against; OpenBLAS explicitly,
#                                        since without recommends libtorch's BLAS dependency
#                                        could be met by the slow reference BLAS
#   libgloo-dev                          Gloo's headers, for c10d's Gloo process group
#   python3-torch                        the same PyTorch makes test/fixtures (scripts/fixtures.js)
#   python3-torchvision                  scripts/setup.sh checks for it; without it setup.sh
#                                        would run apt-get inside on every test run
#   nodejs, npm                          npm ci / build / jest (trixie: Node 20, sid: Node 24)
#   g++, cmake, make                     cmake-js builds the addon
#   ninja-build                          cmake-js picks Ninja when it is there, as on the host
#   ca-certificates                      TLS for npm and python inside (/etc/ssl/certs)
# git is not needed: the file list is taken on the host, and npm pack does not use git.
PACKAGES=(libtorch-dev libgloo-dev libdnnl-dev libopenblas0-pthread python3-torch python3-torchvision
  nodejs npm g++ cmake make ninja-build ca-certificates)
# trixie-arm64: the build and the tools run on the host's architecture, LibTorch is arm64's:
#   g++-aarch64-linux-gnu                the cross compiler (scripts/aarch64-linux-gnu.cmake)
#   libtorch2.6:arm64 and :arm64 -dev    arm64's LibTorch, OpenBLAS, protobuf (which LibTorch's
#   packages                             CMake config asks for) and Gloo's headers
#   qemu-user                            runs arm64 Node and the addon on this x86-64 host
#   nodejs, npm                          the host's Node, for npm ci and the TypeScript build
# libtorch-dev itself cannot be installed for a second architecture (it is not Multi-Arch, and
# pulls in python3-dev:arm64): its headers and CMake config are unpacked from the package.
ARM64_PACKAGES=(g++-aarch64-linux-gnu cmake make qemu-user nodejs npm ca-certificates
  libtorch2.6:arm64 libopenblas0-pthread:arm64 libprotobuf-dev:arm64 libgloo-dev:arm64)

log() { echo "[debian-root${SUITE:+ $SUITE}] $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- timings: each phase's time is printed when it ends, and all of them at exit ----
TIMINGS=()
PHASE=""
PHASE_START=0
now() { date +%s.%N; }
phase_begin() { PHASE=$1; PHASE_START=$(now); log "phase $PHASE ..."; }
phase_end() {
  local took
  took=$(awk -v a="$PHASE_START" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  TIMINGS+=("$(printf '%-24s %8ss%s' "$PHASE" "$took" "${1:+  ($1)}")")
  log "phase $PHASE: ${took}s${1:+ ($1)}"
  PHASE=""
}

# ---- mounts: every mount this script makes is recorded and undone in reverse order ----
MOUNTED=()
bind_mount() { # SRC DST
  mkdir -p "$2"
  mount --bind "$1" "$2"
  MOUNTED+=("$2")
}
unmount_recorded() {
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" ||
      log "warning: could not unmount ${MOUNTED[i]}"
  done
  MOUNTED=()
}
# Mounts left under DIR by an earlier call that was killed outright (kill -9, power loss):
# unmount them, deepest first, before DIR is reused or deleted (deleting a root that still
# has the host's /dev bound inside would delete the host's /dev).
unmount_stale_under() { # DIR
  local dir=$1 m
  awk -v p="$dir" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo |
    sort -r | while read -r m; do
      log "unmounting stale $m"
      umount "$m" 2>/dev/null || umount -l "$m"
    done
}
# The kernel's and the host's devices and DNS/TLS settings, for apt, npm, python and jest.
enter_mounts() { # ROOTDIR
  local r=$1
  unmount_stale_under "$r"
  bind_mount /proc "$r/proc"
  bind_mount /sys "$r/sys"
  bind_mount /dev "$r/dev"
  bind_mount /dev/pts "$r/dev/pts"
  # Not recursive, so /dev/shm (POSIX shared memory: torch, node workers) is bound on its own.
  if mountpoint -q /dev/shm; then bind_mount /dev/shm "$r/dev/shm"; fi
  cp -L --remove-destination /etc/resolv.conf "$r/etc/resolv.conf"
  # The host's bundle may hold a proxy's CA that the root's ca-certificates lacks.
  install -D -m 644 "$CA_BUNDLE" "$r$CA_BUNDLE"
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  unmount_recorded
  if [ -n "$PHASE" ]; then phase_end "failed, exit $rc"; fi
  if [ "${#TIMINGS[@]}" -gt 0 ]; then
    log "timings:"
    printf '  %s\n' "${TIMINGS[@]}" >&2
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs ARGS inside ROOTDIR with a clean environment (nothing of the host's leaks in).
in_root() { # ROOTDIR ARGS...
  local r=$1
  shift
  chroot "$r" /usr/bin/env -i HOME=/root PATH="$GUEST_PATH" LANG=C.UTF-8 TERM="${TERM:-dumb}" \
    NODE_EXTRA_CA_CERTS="$CA_BUNDLE" CI="${CI:-}" DEBIAN_FRONTEND=noninteractive "$@"
}

# A host package, installed when its command is missing; apt-get update only when the
# install fails without it (stale or empty lists).
ensure_host_tool() { # COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  log "installing $2 on the host"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
}

mirror() {
  if [ -n "${TEE_DEBIAN_MIRROR:-}" ]; then echo "$TEE_DEBIAN_MIRROR"; return; fi
  local m=""
  [ -f /etc/apt/sources.list.d/debian.sources ] &&
    m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
  echo "${m:-http://deb.debian.org/debian}"
}

# ---- 1. the root: made once in $ROOT.partial, renamed to $ROOT only when complete ----
ensure_root() {
  if [ -e "$ROOT/.ready" ]; then
    log "reusing $ROOT"
    return 0
  fi
  # $ROOT without .ready was not made by this script (it renames only complete roots):
  # refuse rather than delete someone's directory.
  [ -e "$ROOT" ] && die "$ROOT exists but has no .ready; remove it (rm -rf --one-file-system) or set TEE_ROOTS"

  # An interrupted build is started over, never reused half-made.
  if [ -e "$PARTIAL" ]; then
    [ -e "$PARTIAL/.torch-early-exit-partial" ] || die "$PARTIAL exists and was not made by this script; remove it"
    log "removing the interrupted build $PARTIAL"
    unmount_stale_under "$PARTIAL"
    rm -rf --one-file-system "$PARTIAL"
  fi

  phase_begin "host tools"
  ensure_host_tool debootstrap debootstrap
  phase_end

  phase_begin "debootstrap"
  mkdir -p "$PARTIAL"
  touch "$PARTIAL/.torch-early-exit-partial"
  local m
  m=$(mirror)
  local distribution=${SUITE%-arm64}
  log "debootstrap --variant=minbase $distribution $PARTIAL $m"
  debootstrap --variant=minbase "$distribution" "$PARTIAL" "$m" >"$PARTIAL.debootstrap.log" 2>&1 ||
    { tail -30 "$PARTIAL.debootstrap.log" >&2; die "debootstrap failed; log: $PARTIAL.debootstrap.log"; }
  if [ "$SUITE" = sid ]; then
    # The mirror's sid is a frozen snapshot whose Release file has expired: apt inside refuses it
    # unless told not to check (the host's apt carries the same setting).
    echo 'Acquire::Check-Valid-Until "false";' >"$PARTIAL/etc/apt/apt.conf.d/99tee-frozen-snapshot"
  fi
  phase_end

  phase_begin "package install"
  enter_mounts "$PARTIAL"
  local packages=("${PACKAGES[@]}")
  # sid's PyTorch 2.14 exports ONNX (scripts/peer_models.py, for bench:peer) only with the
  # onnx Python package; 2.6's exporter does without it (see allow_export_without_onnx_package).
  if [ "$SUITE" = sid ]; then packages+=(python3-onnx); fi
  if [ "$SUITE" = trixie-arm64 ]; then
    in_root "$PARTIAL" dpkg --add-architecture arm64
    packages=("${ARM64_PACKAGES[@]}")
  fi
  in_root "$PARTIAL" apt-get update -qq
  in_root "$PARTIAL" apt-get install -y -qq --no-install-recommends "${packages[@]}" >"$PARTIAL.apt.log" 2>&1 ||
    { tail -30 "$PARTIAL.apt.log" >&2; die "apt-get install failed; log: $PARTIAL.apt.log"; }
  if [ "$SUITE" = trixie-arm64 ]; then
    in_root "$PARTIAL" bash -c 'cd /tmp && apt-get download -qq libtorch-dev:arm64 && dpkg -x libtorch-dev_*_arm64.deb / && rm libtorch-dev_*_arm64.deb' ||
      die "could not unpack libtorch-dev:arm64"
  fi
  in_root "$PARTIAL" apt-get clean
  unmount_recorded
  phase_end

  rm -f "$PARTIAL/.torch-early-exit-partial" "$PARTIAL.debootstrap.log" "$PARTIAL.apt.log"
  touch "$PARTIAL/.ready"
  # The rename is what marks the root complete: .ready is only ever seen at $ROOT together
  # with everything above.
  mv "$PARTIAL" "$ROOT"
  log "made $ROOT ($(du -sh --one-file-system "$ROOT" | cut -f1))"
}

# ---- 2. the repository: synced into the root's persistent copy ----
sync_repo() {
  phase_begin "sync repository"
  ensure_host_tool rsync rsync
  local copy="$ROOT$COPY_IN_ROOT" list="$ROOT$SYNC_LIST_IN_ROOT"
  mkdir -p "$copy"
  # Tracked and untracked-not-ignored files: what a fresh clone plus the work in progress
  # has; never node_modules/, build/, dist/, test/fixtures/ or prebuilds/ (all ignored).
  git -C "$REPO" ls-files -co --exclude-standard -z | sort -zu >"$list.new"
  # --delete-missing-args: a tracked file deleted in the work tree is still listed; delete
  # it in the copy too.
  rsync -a --from0 --files-from="$list.new" --delete-missing-args "$REPO/" "$copy/"
  # Files the previous sync copied that are gone from the list now (git rm, deleted
  # untracked files): delete them in the copy. Paths that are ignored now are left alone,
  # since the build inside may own them.
  if [ -f "$list" ]; then
    local path n=0
    while IFS= read -r -d '' path; do
      git -C "$REPO" check-ignore -q --no-index -- "$path" && continue
      [ -d "$copy/$path" ] && [ ! -L "$copy/$path" ] && continue
      rm -f -- "$copy/$path"
      n=$((n + 1))
      if [ "$(dirname -- "$path")" != . ]; then
        (cd "$copy" && rmdir -p --ignore-fail-on-non-empty -- "$(dirname -- "$path")" 2>/dev/null) || true
      fi
    done < <(comm -z -23 "$list" "$list.new")
    if [ "$n" -gt 0 ]; then log "deleted $n file(s) in the copy that are gone here"; fi
  fi
  mv "$list.new" "$list"
  phase_end "$(tr -cd '\0' <"$list" | wc -c) files"
}

copy_back() {
  [ -n "${TEE_COPY_BACK:-}" ] || return 0
  phase_begin "copy back"
  local path owner
  owner=$(stat -c %u:%g "$REPO")
  for path in $TEE_COPY_BACK; do
    path=${path%/}
    case "/$path/" in
      */../* | //*) die "TEE_COPY_BACK: $path must be a path inside the repository" ;;
    esac
    if [ ! -e "$ROOT$COPY_IN_ROOT/$path" ]; then
      log "copy back: $path does not exist inside, skipped"
      continue
    fi
    # -R with /./: recreate $path under the checkout; no --delete, so host files stay.
    rsync -aR --chown="$owner" "$ROOT$COPY_IN_ROOT/./$path" "$REPO/"
    log "copied back $path"
  done
  phase_end
}

run_in_root() { # CMD
  local cmd=$1
  sync_repo
  phase_begin "run"
  enter_mounts "$ROOT"
  log "in $ROOT:$COPY_IN_ROOT: $cmd"
  # set -e ends the script here when CMD fails: on_exit unmounts and prints timings, and
  # nothing is copied back from a failed run.
  in_root "$ROOT" bash -lc "cd $COPY_IN_ROOT && $cmd"
  unmount_recorded
  phase_end
  copy_back
}

# ---- 3. what the LibTorch versions give each other ----
# The fixtures each PyTorch made (a scripted and a traced ResNet-20 with their references, a
# state dict saved by Python's torch.save) go to every other side's test/fixtures/torch-<version>/
# for test/cross-version.test.ts, and each side's prebuilt binary goes to every other's
# prebuilds/, so that npm pack on any side carries all of them.
exchange() { # SUITE...
  phase_begin "exchange"
  local sides=("$REPO") suite from to version file own
  for suite in "$@"; do
    [ -e "$ROOTS/$suite/.ready" ] || die "no $suite root: run bash $0 $suite build first"
    sides+=("$ROOTS/$suite$COPY_IN_ROOT")
  done
  for from in "${sides[@]}"; do
    [ -f "$from/test/fixtures/TORCH_VERSION" ] || die "no fixtures in $from/test/fixtures: run scripts/setup.sh there first"
    version=$(cat "$from/test/fixtures/TORCH_VERSION")
    # PyTorch and LibTorch come from one Debian source, so they share the version (1.13.0a0:
    # the binary says 1.13.0).
    own=()
    for file in "$from"/prebuilds/*/"torch-early-exit.libtorch-${version%%[!0-9.]*}".*.node; do
      [ -f "$file" ] && own+=("${file#"$from/"}")
    done
    [ "${#own[@]}" -gt 0 ] || die "no LibTorch ${version%%[!0-9.]*} binary in $from/prebuilds: run scripts/setup.sh there first"
    for to in "${sides[@]}"; do
      [ "$from" = "$to" ] && continue
      rm -rf "$to/test/fixtures/torch-$version"
      mkdir -p "$to/test/fixtures/torch-$version"
      cp "$from/test/fixtures/"{resnet20_scripted.pt,resnet20_traced.pt,resnet20_reference.json,branch_state_dict.pt,TORCH_VERSION} \
        "$from/test/fixtures/"{text_encoder_scripted.pt,text_encoder_reference.json} "$to/test/fixtures/torch-$version/"
      # Exported programs exist from PyTorch 2.6 on.
      for exported in resnet20_exported.pt2 exported_reference.json text_encoder_exported.pt2; do
        if [ -f "$from/test/fixtures/$exported" ]; then cp "$from/test/fixtures/$exported" "$to/test/fixtures/torch-$version/"; fi
      done
      # Only the binary this side built itself: a reused root also holds the others' binaries
      # from earlier exchanges, and passing those on would overwrite a fresh build with a stale
      # copy of it (as happened when sid's new 2.14 binary was replaced by trixie's old one).
      (cd "$from" && cp --parents "${own[@]}" "$to/")
      log "fixtures of PyTorch $version and the LibTorch ${version%%[!0-9.]*} binary of $from -> $to"
    done
  done
  phase_end
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p' >&2
  exit 2
}

[ "$(id -u)" -eq 0 ] || die "needs root (chroot, mount): sudo bash $0 $*"
[ $# -ge 1 ] || usage

known_suite() { local s; for s in "${SUITES[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

if [ "$1" = host-tools ]; then
  ensure_host_tool debootstrap debootstrap
  ensure_host_tool rsync rsync
  exit 0
fi

if [ "$1" = exchange ]; then
  shift
  [ $# -ge 1 ] || usage
  for suite in "$@"; do known_suite "$suite" || die "unknown suite $suite (known: ${SUITES[*]})"; done
  # Every root named is locked, in the order given, so that no run writes fixtures meanwhile.
  fd=9
  for suite in "$@"; do
    mkdir -p "$ROOTS"
    eval "exec $fd>\"\$ROOTS/\$suite.lock\""
    flock "$fd"
    fd=$((fd + 1))
  done
  exchange "$@"
  exit 0
fi

SUITE=$1
shift
known_suite "$SUITE" || die "unknown suite $SUITE (known: ${SUITES[*]})"
ROOT=$ROOTS/$SUITE
PARTIAL="$ROOT.partial"

# One call at a time per root: two would mount over each other and race in the copy.
mkdir -p "$ROOTS"
exec 9>"$ROOT.lock"
flock -n 9 || { log "waiting for another call on $ROOT"; flock 9; }

case "${1:-}" in
  build) ensure_root ;;
  run)
    [ $# -eq 2 ] || usage
    ensure_root
    run_in_root "$2"
    ;;
  test)
    ensure_root
    run_in_root 'bash scripts/setup.sh && npm test'
    ;;
  *) usage ;;
esac
