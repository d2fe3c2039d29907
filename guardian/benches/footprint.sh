#!/usr/bin/env bash
# Footprint: the stripped aarch64 binary's size and the idle RSS of
# `guardian run`, against the targets (binary <= 8 MiB, idle RSS <= 12 MiB),
# with what each is made of. Figures go in docs/footprint.md.
#
#   sudo guardian/benches/footprint.sh [--baseline REV] [IDLE_SECONDS]
#
# IDLE_SECONDS (default 30) is how long each agent sits idle before it is
# measured. --baseline REV also builds REV (exported under the target
# directory, with its own target directory beside it) and measures it in the
# same run, side by side: its agents take turns with this tree's, so both
# see the same machine.
#
# Binary: the aarch64 release build, stripped as a package would strip it;
# the eBPF object it embeds; the same build without the fleet link
# (`--no-default-features`, this tree only).
#
# RSS: root (the agent loads eBPF). On this host's kernel (x86_64), default
# config, three fresh agents per tree. VmRSS, RssAnon and RssFile are from
# /proc/PID/status; the breakdown sums /proc/PID/smaps by mapping: the
# ring buffer (a BPF map the kernel lets the agent read: its size plus two
# pages since the agent maps the data once, guardian/src/events/ring.rs;
# twice its size before, when the data was mapped twice), the binary's own
# pages, shared libraries, and the rest (heap, stacks, anonymous memory).
# Then each agent is put to work (1,000 write-opens of its protected model,
# each denied and reported) and its VmRSS read again 5 s later.
#
# Beside this tree's default, its agents with other ring sizes take turns
# too: RINGS (KiB, default "256 512 4096").
#
# Builds use CARGO_TARGET_DIR when set.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
baseline=""
idle=30
while [ $# -gt 0 ]; do
    case "$1" in
        --baseline) baseline="${2:?--baseline needs a revision}"; shift 2 ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) idle="$1"; shift ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "footprint: run as root (the agent loads eBPF)" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-$root/target}"
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# build SRC TARGET_DIR LABEL [CARGO ARGS...]: the aarch64 release binary,
# stripped into $tmp/LABEL, and its eBPF object's size into $tmp/LABEL.obj.
build_arm() {
    local src="$1" tdir="$2" label="$3"
    shift 3
    (cd "$src" && CARGO_TARGET_DIR="$tdir" cargo build --release --locked \
        --target aarch64-unknown-linux-gnu -p guardian "$@" >"$tmp/$label.build" 2>&1) || {
        tail -n 20 "$tmp/$label.build" >&2
        echo "footprint: the aarch64 build of $label failed (run cross/setup.sh)" >&2
        exit 1
    }
    local bin="$tdir/aarch64-unknown-linux-gnu/release/guardian"
    llvm-strip -o "$tmp/$label" "$bin" 2>/dev/null || aarch64-linux-gnu-strip -o "$tmp/$label" "$bin"
    # The object embedded is the newest one a build script of this profile
    # left (older ones stay from earlier builds).
    stat -c %s "$(ls -t "$tdir"/aarch64-unknown-linux-gnu/release/build/guardian-*/out/guardian-ebpf | head -n 1)" \
        >"$tmp/$label.obj"
}

build_host() {
    local src="$1" tdir="$2" label="$3"
    (cd "$src" && CARGO_TARGET_DIR="$tdir" cargo build --release --locked -p guardian \
        >"$tmp/$label.hostbuild" 2>&1) || {
        tail -n 20 "$tmp/$label.hostbuild" >&2
        echo "footprint: the host build of $label failed" >&2
        exit 1
    }
    cp "$tdir/release/guardian" "$tmp/$label.host"
}

labels=(this)
src_this="$root"
tdir_this="$target"
if [ -n "$baseline" ]; then
    rev="$(git rev-parse --verify "$baseline^{commit}")"
    base_src="$target/footprint-baseline/src"
    base_tdir="$target/footprint-baseline/target"
    # A plain export of REV (no worktree to clean up), kept for the next run.
    if [ "$(cat "$base_src/.footprint-rev" 2>/dev/null || true)" != "$rev" ]; then
        rm -rf "$base_src"
        mkdir -p "$base_src"
        # -m: the files dated now, not at the commit, or cargo would take
        # an older export's artifacts for up to date.
        git archive "$rev" | tar -x -m -C "$base_src"
        echo "$rev" >"$base_src/.footprint-rev"
    fi
    labels=(baseline this)
fi

echo "## building (release; aarch64 and this host)"
for l in "${labels[@]}"; do
    if [ "$l" = baseline ]; then s="$base_src" t="$base_tdir"; else s="$src_this" t="$tdir_this"; fi
    build_arm "$s" "$t" "$l"
    build_host "$s" "$t" "$l"
done
build_arm "$src_this" "$tdir_this" this-noreport --no-default-features

echo
echo "## binary (stripped aarch64)"
printf '| build | bytes | MiB | eBPF object, bytes | target 8 MiB |\n|---|---:|---:|---:|---|\n'
for l in "${labels[@]}" this-noreport; do
    size=$(stat -c %s "$tmp/$l")
    name="$l"
    [ "$l" = baseline ] && name="baseline ($(git rev-parse --short "$rev"))"
    [ "$l" = this-noreport ] && name="this, without the fleet link (--no-default-features)"
    printf '| %s | %s | %s | %s | %s |\n' "$name" "$size" "$(mib "$size")" "$(cat "$tmp/$l.obj")" \
        "$([ "$size" -le 8388608 ] && echo met || echo NOT met)"
done

# smaps_split PID BIN: "ring binary libs rest" in KiB.
smaps_split() {
    awk -v bin="$2" '
        /^[0-9a-f]+-[0-9a-f]+ / { name = (NF >= 6) ? $6 : "" ; next }
        /^Rss:/ {
            if (name ~ /^anon_inode:bpf-map/) ring += $2
            else if (name == bin) own += $2
            else if (name ~ /\.so/) libs += $2
            else rest += $2
        }
        END { printf "%d %d %d %d\n", ring, own, libs, rest }' "/proc/$1/smaps"
}

echo
echo "## idle RSS (this host, default config, ${idle} s idle; KiB except VmRSS)"
printf '| round | build | VmRSS | RssAnon | RssFile | ring buffer | binary | libraries | heap, stacks, other | VmRSS less the ring | target 12 MiB | VmRSS after 1,000 denied writes |\n'
printf '|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n'
# The same agent with other ring sizes beside the default: how much of the
# figure is the ring ([events] ring_buffer_kib trades it against drops in a
# burst, docs/guard-benchmarks.md part r). RINGS (KiB, default "256 512
# 4096") says which.
ring_labels=()
for k in ${RINGS-256 512 4096}; do ring_labels+=("this-ring$k"); done
for round in 1 2 3; do
    for l in "${labels[@]}" "${ring_labels[@]}"; do
        d="$tmp/r$round-$l"
        mkdir -p "$d/models"
        head -c 100000 /dev/urandom >"$d/models/m.onnx"
        cat >"$d/guardian.toml" <<CFG
[guard]
protected = ["$d/models"]
pin_dir = "/sys/fs/bpf/guardianfoot$$-$round-$l"
unload_without_token = true
[events]
output = "$d/events.jsonl"
$(case "$l" in this-ring*) echo "ring_buffer_kib = ${l#this-ring}" ;; esac)
[status]
path = "$d/status.json"
[measure]
log = "$d/measurements.log"
manifest = "$d/manifest.toml"
CFG
        bin="$tmp/${l%-ring*}.host"
        "$bin" run --config "$d/guardian.toml" 2>"$d/agent.log" &
        pid=$!
        for _ in $(seq 100); do [ -s "$d/status.json" ] && break; sleep 0.1; done
        sleep "$idle"
        st="/proc/$pid/status"
        rss=$(awk '/^VmRSS/ {print $2}' "$st")
        anon=$(awk '/^RssAnon/ {print $2}' "$st")
        file=$(awk '/^RssFile/ {print $2}' "$st")
        read -r ring own libs rest < <(smaps_split "$pid" "$bin")
        # Then the same agent after work: 1,000 write-opens of the protected
        # model, each denied and reported (the event path's code and
        # buffers come in), and 5 s more.
        for _ in $(seq 1000); do : 2>/dev/null >>"$d/models/m.onnx" || true; done
        sleep 5
        busy=$(awk '/^VmRSS/ {print $2}' "$st")
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        "$bin" stop --unload --config "$d/guardian.toml" >/dev/null 2>&1 || true
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$round" "$l" \
            "$(mib $((rss * 1024)))" "$anon" "$file" "$ring" "$own" "$libs" "$rest" \
            "$(mib $(((rss - ring) * 1024)))" "$([ "$rss" -le 12288 ] && echo met || echo NOT met)" \
            "$(mib $((busy * 1024)))"
    done
done
