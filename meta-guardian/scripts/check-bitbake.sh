#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The layer under a real bitbake, offline: the README's own layer-setup and
# local.conf blocks, then parses, variable dumps, task graphs and a dry run.
#
#     meta-guardian/scripts/check-bitbake.sh [options] SOURCES_DIR
#
# SOURCES_DIR holds git repositories (bare mirrors or checkouts) of bitbake,
# openembedded-core, meta-openembedded, meta-security, meta-raspberrypi and
# meta-tegra, each found as SOURCES_DIR/NAME, NAME.git or OWNER+NAME/repo
# (the layout of the project's mirror snapshots). A repository with a branch
# named after the release is exported at that branch (git archive); one
# without it is exported at its HEAD (a checkout of that release). bitbake's
# branch is not configured: it is the oldest X.Y branch whose version meets
# BB_MIN_VERSION in oe-core's meta/conf/sanity.conf (whinlatter: 2.15.2 ->
# 2.16; wrynose: 2.18.0 -> 2.18).
#
# Options:
#   --release R   a release to check (repeatable; default: every name in
#                 LAYERSERIES_COMPAT_guardian)
#   --scenario S  readme, boards, nofeature, corefeature, kas (repeatable;
#                 default all)
#   --work DIR    work area, reused between runs so bitbake's parse cache
#                 is (default /var/tmp/guardian-check-bitbake)
#   --user NAME   when run as root, the unprivileged user bitbake runs as
#                 (created if missing; default guardian-bb): bitbake
#                 refuses to run as root
#   --threads N   BB_NUMBER_PARSE_THREADS (default 1)
#   --quick       readme scenario: stop after bitbake -p (test-check-bitbake.sh)
#
# The layer checked is the one this script sits in, copied to
# WORK/RELEASE/guardian/meta-guardian, so that the README's relative paths
# (../meta-openembedded/..., ../guardian/meta-guardian) hold from the build
# directory WORK/RELEASE/build-SCENARIO.
#
# Scenarios, each a build directory, every bitbake run with
# BB_NO_NETWORK = "1" and MACHINE = "qemuarm64":
#   readme       oe-init-build-env, then the README's "layers" command block
#                and its local.conf block (marked <!-- check-bitbake: ... -->
#                in README.md; placeholders filled with dummy values), plus
#                meta-raspberrypi and meta-tegra for the dynamic layers and
#                INIT_MANAGER = "systemd": show-layers, show-appends (our
#                appends on linux-yocto, linux-raspberrypi and the tegra
#                kernel), bitbake -p, bitbake -e of each of our recipes
#                (with the kernel fragments in linux-yocto's SRC_URI and
#                pahole-native in its DEPENDS), bitbake -g and bitbake -n
#                of guardian-image-qemuarm64; bitbake guardian-policies -c
#                unpack of the README's file:// tarball and do_install's
#                signing command run on the S bitbake unpacked.
#   boards       docs/boards.md's qemuarm64 bblayers.conf and local.conf
#                blocks (marked like the README's), placeholders filled:
#                bitbake-layers show-layers (every layer dependency met) and
#                DISTRO_FEATURES with guardian and tpm2 (configuration only,
#                no second full parse).
#   nofeature    oe-core + meta-guardian only, no "guardian" distro
#                feature: bitbake -p, and linux-yocto untouched (no guardian
#                fragment in its SRC_URI).
#   corefeature  oe-core + meta-guardian only, the feature on: bitbake -p
#                must stop with our message naming meta-oe.
#   kas          each kas/*.yml whose openembedded-core branch is the
#                release, with kas (pinned, in WORK/kas-venv, from PyPI the
#                first time) and an overlay pointing each of its repos' url
#                at the local git repository (same branches): `kas dump`
#                (schema, includes, checkouts), its bitbake branch equal to
#                the one BB_MIN_VERSION picks, and `kas shell -c
#                'bitbake-layers show-layers'` (layer dependencies) as the
#                unprivileged user.
#
# A step fails on a non-zero exit, any ERROR line, and any WARNING line that
# comes from our layer (names it, its path or a guardian recipe) or from
# meta-tpm's missing-tpm-feature sanity check (our instructions' fault).
# Other layers' warnings are listed, not failed. Prints PASS/FAIL per step
# and the figures (time, recipes parsed, tasks of the image), and exits 1 if
# a step failed; full logs under WORK/logs/RELEASE/.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
layer="$(dirname "$here")"

RELEASES=()
SCENARIOS=()
WORK=/var/tmp/guardian-check-bitbake
RUNAS=guardian-bb
THREADS=1
QUICK=0
SOURCES=""
while [ $# -gt 0 ]; do
    case "$1" in
        --release) RELEASES+=("$2"); shift 2 ;;
        --scenario) SCENARIOS+=("$2"); shift 2 ;;
        --work) WORK="$2"; shift 2 ;;
        --user) RUNAS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        -h|--help) sed -n '2,55p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) SOURCES="$1"; shift ;;
    esac
done
[ -n "$SOURCES" ] || { echo "usage: $0 [options] SOURCES_DIR (see $0 --help)" >&2; exit 2; }
SOURCES="$(readlink -f "$SOURCES")"
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(readme boards nofeature corefeature kas)
KAS_PIN=kas==5.5
if [ ${#RELEASES[@]} -eq 0 ]; then
    read -r -a RELEASES <<<"$(sed -n 's/^LAYERSERIES_COMPAT_guardian *= *"\(.*\)"/\1/p' "$layer/conf/layer.conf")"
fi
CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# --- host -----------------------------------------------------------------------
missing=""
for t in gawk chrpath diffstat zstd lz4c file rpcgen cpio makeinfo git python3; do
    command -v "$t" >/dev/null || missing="$missing $t"
done
if [ -n "$missing" ]; then
    echo "host tools missing:$missing (Debian: apt-get install gawk chrpath diffstat zstd lz4 file rpcsvc-proto cpio texinfo git python3)" >&2
    exit 2
fi
locale -a 2>/dev/null | grep -qix 'en_US.utf8' || {
    echo "no en_US.UTF-8 locale (uncomment it in /etc/locale.gen, run locale-gen)" >&2; exit 2; }
if [ "$(id -u)" = 0 ]; then
    id "$RUNAS" >/dev/null 2>&1 || useradd -m -s /bin/bash "$RUNAS" || exit 2
fi
mkdir -p "$WORK/logs"

# The repositories belong to someone else: trust them for git archive.
G() { git -c safe.directory='*' "$@"; }

# gitdir NAME: the git directory of NAME under SOURCES_DIR
gitdir() {
    local n="$1" c
    for c in "$SOURCES/$n" "$SOURCES/$n.git" "$SOURCES"/*+"$n"/repo; do
        [ -e "$c" ] || continue
        G -C "$c" rev-parse --git-dir >/dev/null 2>&1 || continue
        (cd "$c" && readlink -f "$(G rev-parse --git-dir)")
        return 0
    done
    return 1
}

# export_tree GITDIR REF DEST: the tree at REF, re-exported only if REF moved.
export_tree() {
    local g="$1" ref="$2" dest="$3" rev
    rev="$(G --git-dir="$g" rev-parse -q --verify "$ref^{commit}")" || return 1
    if [ "$(cat "$dest/.guardian-check-rev" 2>/dev/null)" = "$rev" ]; then return 0; fi
    rm -rf "$dest" && mkdir -p "$dest"
    G --git-dir="$g" archive --format=tar "$rev" | tar -x -C "$dest" || return 1
    echo "$rev" >"$dest/.guardian-check-rev"
}

# release_ref GITDIR RELEASE: the branch RELEASE if the repository has it,
# else HEAD (a checkout of that release).
release_ref() {
    if G --git-dir="$1" rev-parse -q --verify "refs/heads/$2" >/dev/null; then echo "refs/heads/$2"; else echo HEAD; fi
}

version_ge() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]; }

# bitbake_ref GITDIR MIN: the oldest X.Y branch whose lib/bb/__init__.py
# version is >= MIN; else HEAD if HEAD's version is.
bitbake_ref() {
    local g="$1" min="$2" br v
    for br in $(G --git-dir="$g" for-each-ref --format='%(refname:short)' refs/heads | grep -E '^[0-9]+\.[0-9]+$' | sort -V); do
        v="$(G --git-dir="$g" show "$br:lib/bb/__init__.py" | sed -n 's/^__version__ = "\(.*\)"/\1/p')"
        if version_ge "$v" "$min"; then echo "refs/heads/$br"; return 0; fi
    done
    v="$(G --git-dir="$g" show "HEAD:lib/bb/__init__.py" | sed -n 's/^__version__ = "\(.*\)"/\1/p')"
    if [ -n "$v" ] && version_ge "$v" "$min"; then echo HEAD; return 0; fi
    return 1
}

# readme_block MARKER [FILE]: the fenced block following
# <!-- check-bitbake: MARKER in FILE (default README.md)
readme_block() {
    awk -v m="<!-- check-bitbake: $1 " '
        index($0, m) == 1 { armed = 1; next }
        armed && /^```/ { if (inside) exit; inside = 1; next }
        inside { print }' "$layer/${2:-README.md}"
}

# fill: the documented placeholders replaced by the dummy artifacts
fill() {
    sed -e "s|^GUARDIAN_SRCREV = .*|GUARDIAN_SRCREV = \"0123456789abcdef0123456789abcdef01234567\"|" \
        -e "s|^GUARDIAN_EBPF_URI = .*|GUARDIAN_EBPF_URI = \"file://$art/guardian-ebpf-0.1.0.o\"|" \
        -e "s|^GUARDIAN_EBPF_SHA256 = .*|GUARDIAN_EBPF_SHA256 = \"$ebpf_sha\"|" \
        -e "s|^GUARDIAN_POLICIES_URI = .*|GUARDIAN_POLICIES_URI = \"file://$art/guardian-policies-0.1.0.tar.gz\"|" \
        -e "s|^GUARDIAN_POLICIES_SHA256 = .*|GUARDIAN_POLICIES_SHA256 = \"$pol_sha\"|"
}

say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
SUMMARY="$WORK/logs/summary-$(date +%Y%m%d-%H%M%S).txt"
: >"$SUMMARY"
failed=0

# as_user CMD: a shell string as the unprivileged user (when root)
as_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$RUNAS" -- env -i HOME="$(getent passwd "$RUNAS" | cut -d: -f6)" USER="$RUNAS" \
            PATH="$CLEAN_PATH" LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8 TERM=dumb \
            GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*' nice -n 10 bash -c "$1"
    else
        bash -c "$1"
    fi
}

# in_env REL BUILD CMD: CMD (a shell string) in oe-core's build environment,
# as the unprivileged user when run as root.
in_env() {
    local rel="$1" build="$2" cmd="$3" script
    script="cd '$WORK/$rel/openembedded-core' && . ./oe-init-build-env '$build' >/dev/null && set -e && $cmd"
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$RUNAS" -- env -i HOME="$(getent passwd "$RUNAS" | cut -d: -f6)" USER="$RUNAS" \
            PATH="$CLEAN_PATH" LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8 TERM=dumb \
            nice -n 10 bash -c "$script"
    else
        env -i HOME="$HOME" USER="${USER:-$(id -un)}" PATH="$CLEAN_PATH" LANG=en_US.UTF-8 \
            LC_ALL=en_US.UTF-8 TERM=dumb nice -n 10 bash -c "$script"
    fi
}

# kas_check REL BBBRANCH: the kas files of release REL against local repos.
kas_check() {
    local rel="$1" bbbr="$2" kw="$WORK/kas" venv="$WORK/kas-venv" kf b ov rc dumped
    if ! "$venv/bin/pip" freeze 2>/dev/null | grep -qixF "$KAS_PIN"; then
        rm -rf "$venv"
        # The system's python3: a venv's interpreter must be readable by the
        # unprivileged user (not one under root's home, e.g. pyenv's).
        if ! { PATH="$CLEAN_PATH" python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check "$KAS_PIN"; }; then
            say "FAIL  [$rel/kas] cannot install $KAS_PIN (PyPI)"; failed=1; return 1
        fi
    fi
    # The kas files' own repository ("guardian", no url): a git repository
    # holding a copy of the layer, owned by the user kas shell runs as.
    rm -rf "$kw/guardian" && mkdir -p "$kw/guardian"
    cp -a "$layer" "$kw/guardian/meta-guardian"
    G -C "$kw/guardian" init -q && G -C "$kw/guardian" add -A \
        && G -C "$kw/guardian" -c user.name=check -c user.email=check@localhost commit -q -m layer || return 1
    for kf in "$kw/guardian/meta-guardian/kas/"*.yml; do
        b="$(basename "$kf" .yml)"
        # The overlay: each repo of the file (with its includes) at the
        # local repository; the file's own choice of branches is kept.
        ov="$kw/guardian/local-urls-$b.yml"
        "$venv/bin/python3" - "$kw/guardian" "meta-guardian/kas/$b.yml" "$ov" "$SOURCES" >/dev/null <<'PY' || { say "FAIL  [$rel/kas] $b.yml: unreadable"; failed=1; continue; }
import glob, os, sys, yaml
root, top, out, sources = sys.argv[1:5]
repos, oe = {}, None
def load(path):
    d = yaml.safe_load(open(os.path.join(root, path))) or {}
    for inc in (d.get("header", {}) or {}).get("includes") or []:
        load(inc if isinstance(inc, str) else inc.get("file"))
    for k, v in (d.get("repos") or {}).items():
        repos.setdefault(k, {}).update(v or {})
load(top)
over = {}
for name, r in repos.items():
    if not r.get("url"):
        continue
    for c in [os.path.join(sources, name), os.path.join(sources, name + ".git")] + \
             glob.glob(os.path.join(sources, "*+" + name, "repo")):
        if os.path.exists(c):
            over[name] = {"url": os.path.realpath(c)}
            break
    else:
        sys.exit(f"no local repository for {name}")
yaml.safe_dump({"header": {"version": 14}, "repos": over}, open(out, "w"))
print(repos.get("openembedded-core", {}).get("branch", ""))
PY

        [ -s "$ov" ] || continue
        # kas runs git with a filtered environment (no safe.directory), so
        # each url is a small clone owned by the unprivileged user that
        # borrows the objects of the repository in SOURCES_DIR (--shared).
        mkdir -p "$kw/repos"
        while read -r url; do
            local_url="$kw/repos/$(basename "$(dirname "$url")")-$(basename "$url").git"
            [ -d "$local_url" ] || G clone -q --bare --shared "$url" "$local_url" || return 1
            sed -i "s|url: $url\$|url: $local_url|" "$ov"
        done < <(sed -n 's/^ *url: //p' "$ov")
        [ "$(id -u)" = 0 ] && chown -R "$RUNAS:" "$kw"
        log="$WORK/logs/$rel/kas/$b-dump.log"; mkdir -p "$(dirname "$log")"
        as_user "cd '$kw/guardian' && KAS_WORK_DIR='$kw/w-$b' '$venv/bin/kas' dump 'meta-guardian/kas/$b.yml:local-urls-$b.yml'" >"$log" 2>&1
        rc=$?
        dumped="$(sed -n '/^repos:/,$p' "$log")"
        oebr="$(awk '/^  openembedded-core:/{f=1} f&&/^    branch:/{gsub(/[" '"'"']/,"",$2); print $2; exit}' "$log")"
        [ "$oebr" = "$rel" ] || { [ "$rc" -eq 0 ] && continue; }
        [ "$rc" -eq 0 ] && [ -n "$dumped" ]
        assert "$rel" kas "$b.yml: kas dump with local urls" $? "$(grep -E 'ERROR|rror' "$log" | head -n 5)"
        [ "$rc" -eq 0 ] || continue
        kbb="$(awk '/^  bitbake:/{f=1} f&&/^    branch:/{gsub(/[" '"'"']/,"",$2); print $2; exit}' "$log")"
        [ "$kbb" = "$bbbr" ]
        assert "$rel" kas "$b.yml: bitbake branch $kbb is the one BB_MIN_VERSION picks ($bbbr)" $?
        log="$WORK/logs/$rel/kas/$b-show-layers.log"
        as_user "cd '$kw/guardian' && KAS_WORK_DIR='$kw/w-$b' GUARDIAN_SRCREV=0123456789abcdef0123456789abcdef01234567 '$venv/bin/kas' shell 'meta-guardian/kas/$b.yml:local-urls-$b.yml' -c 'bitbake-layers show-layers'" >"$log" 2>&1
        rc=$?
        [ "$rc" -eq 0 ] && ! grep -qE '^(ERROR|CRITICAL):| - ERROR ' "$log" && grep -q '^guardian ' "$log"
        assert "$rel" kas "$b.yml: kas shell -c 'bitbake-layers show-layers'" $? "$(grep -E '^(ERROR|CRITICAL):| - ERROR ' "$log" | head -n 5)"
    done
}

# step REL SCEN NAME CMD: run, log, judge. Sets LAST_LOG.
STEPNO=0
LAST_LOG=""
step() {
    local rel="$1" scen="$2" name="$3" cmd="$4" log rc t0 bad
    STEPNO=$((STEPNO + 1))
    log="$WORK/logs/$rel/$scen/$(printf '%02d' "$STEPNO")-$name.log"
    mkdir -p "$(dirname "$log")"
    t0=$SECONDS
    { echo "+ $cmd"; in_env "$rel" "$WORK/$rel/build-$scen" "$cmd"; } >"$log" 2>&1
    rc=$?
    LAST_LOG="$log"
    # Ours: a WARNING naming our layer's path or a guardian recipe, once
    # the work area's own path (which may say "guardian") is taken out.
    # (bitbake may print a message on its "Parsing recipes..." line.)
    bad="$(grep -E '(^|\.\.\.)(ERROR|FATAL|CRITICAL):' "$log"
           grep -E '(^|\.\.\.)WARNING:' "$log" | sed "s|$WORK|WORK|g" | grep -iE "guardian|tpm or tpm2' has not been enabled")"
    if [ "$rc" -eq 0 ] && [ -z "$bad" ]; then
        say "PASS  [$rel/$scen] $name ($((SECONDS - t0)) s)"
        grep -E '(^|\.\.\.)WARNING:' "$log" | sed 's/^/      other layer: /' | head -n 10 | tee -a "$SUMMARY"
        return 0
    fi
    say "FAIL  [$rel/$scen] $name: rc=$rc ($log)"
    { [ -n "$bad" ] && printf '%s\n' "$bad"; [ -z "$bad" ] && tail -n 15 "$log"; } | head -n 25 | sed 's/^/      /' | tee -a "$SUMMARY"
    failed=1
    return 1
}

# assert REL SCEN NAME: a check on files, not a bitbake run
assert() {
    local rel="$1" scen="$2" name="$3" ok="$4" detail="${5:-}"
    if [ "$ok" = 0 ]; then say "PASS  [$rel/$scen] $name"; else
        say "FAIL  [$rel/$scen] $name"; [ -n "$detail" ] && say "      $detail"; failed=1; fi
}

# getvar LOG VAR: a variable's final value in a bitbake -e log
getvar() { grep -E "^(export )?$2=" "$1" | tail -n1 | sed -E "s/^(export )?$2=\"(.*)\"$/\2/"; }

local_conf_common() {
    cat <<EOF

# --- check-bitbake.sh ---
MACHINE = "qemuarm64"
BB_NO_NETWORK = "1"
BB_NUMBER_PARSE_THREADS = "$THREADS"
BB_NUMBER_THREADS = "1"
PARALLEL_MAKE = "-j 1"
DL_DIR = "$WORK/downloads"
SSTATE_DIR = "\${TOPDIR}/sstate-cache"
BB_DISKMON_DIRS = ""
EOF
}

# --- per release ------------------------------------------------------------------
for rel in "${RELEASES[@]}"; do
    say "== $rel"
    t_rel=$SECONDS
    oe_git="$(gitdir openembedded-core)" || { say "FAIL  no openembedded-core repository in $SOURCES"; exit 2; }
    bb_git="$(gitdir bitbake)" || { say "FAIL  no bitbake repository in $SOURCES"; exit 2; }
    ref="$(release_ref "$oe_git" "$rel")"
    export_tree "$oe_git" "$ref" "$WORK/$rel/openembedded-core" || { say "FAIL  cannot export openembedded-core $ref"; failed=1; continue; }
    series="$(sed -n 's/^LAYERSERIES_CORENAMES *= *"\(.*\)"/\1/p' "$WORK/$rel/openembedded-core/meta/conf/layer.conf")"
    if ! grep -qw "$rel" <<<"$series"; then
        say "FAIL  openembedded-core ($ref) is series '$series', not $rel"; failed=1; continue
    fi
    min="$(sed -n 's/^BB_MIN_VERSION *= *"\(.*\)"/\1/p' "$WORK/$rel/openembedded-core/meta/conf/sanity.conf")"
    bbref="$(bitbake_ref "$bb_git" "$min")" || { say "FAIL  no bitbake branch >= $min (BB_MIN_VERSION of oe-core $rel)"; failed=1; continue; }
    export_tree "$bb_git" "$bbref" "$WORK/$rel/bitbake" || { failed=1; continue; }
    # oe-init-build-env finds bitbake next to meta/ or in ../bitbake.
    ln -sfn ../bitbake "$WORK/$rel/openembedded-core/bitbake"
    say "      bitbake ${bbref#refs/heads/} (BB_MIN_VERSION $min), $(cat "$WORK/$rel/bitbake/.guardian-check-rev")"
    say "      openembedded-core $ref, $(cat "$WORK/$rel/openembedded-core/.guardian-check-rev")"
    for n in meta-openembedded meta-security meta-raspberrypi meta-tegra; do
        g="$(gitdir "$n")" || { say "FAIL  no $n repository in $SOURCES"; failed=1; continue 2; }
        r="$(release_ref "$g" "$rel")"
        export_tree "$g" "$r" "$WORK/$rel/$n" || { say "FAIL  cannot export $n $r"; failed=1; continue 2; }
        say "      $n $r, $(cat "$WORK/$rel/$n/.guardian-check-rev")"
    done
    # The layer under test, where the README's ../guardian/meta-guardian is.
    rm -rf "$WORK/$rel/guardian" && mkdir -p "$WORK/$rel/guardian"
    cp -a "$layer" "$WORK/$rel/guardian/meta-guardian"
    # Dummy artifacts for the GUARDIAN_* placeholders (parsing and task
    # graphs only read their names and checksums).
    art="$WORK/artifacts"
    mkdir -p "$art"
    printf 'dummy eBPF object for check-bitbake.sh\n' >"$art/guardian-ebpf-0.1.0.o"
    mkdir -p "$art/p/guardian-policies-0.1.0"
    printf '\0asm\1\0\0\0' >"$art/p/guardian-policies-0.1.0/model_writer.wasm"
    tar -C "$art/p" --sort=name --mtime=@0 --owner=0 --group=0 -czf "$art/guardian-policies-0.1.0.tar.gz" guardian-policies-0.1.0
    pol_sha="$(sha256sum "$art/guardian-policies-0.1.0.tar.gz" | cut -d' ' -f1)"
    [ "$(id -u)" = 0 ] && chown -R "$RUNAS:" "$WORK"
    ebpf_sha="$(sha256sum "$art/guardian-ebpf-0.1.0.o" | cut -d' ' -f1)"
    our="$WORK/$rel/guardian/meta-guardian"

    for scen in "${SCENARIOS[@]}"; do
        STEPNO=0
        build="$WORK/$rel/build-$scen"
        # A fresh configuration every run (the tmp/ parse cache is kept).
        rm -rf "$build/conf"
        case "$scen" in
        readme)
            layers_block="$(readme_block layers)"
            conf_block="$(readme_block local.conf)
$(readme_block policies)"
            if [ -z "$layers_block" ] || [ -z "$conf_block" ]; then
                assert "$rel" "$scen" "README.md has the marked layers and local.conf blocks" 1; continue
            fi
            # oe-init-build-env writes the default bblayers.conf (oe-core's
            # meta alone); then the README's commands, as written.
            step "$rel" "$scen" readme-add-layers "$layers_block" || continue
            {
                local_conf_common
                echo 'INIT_MANAGER = "systemd"'
                echo "# --- README.md's local.conf block, placeholders filled ---"
                printf '%s\n' "$conf_block" | fill
            } >>"$build/conf/local.conf"
            step "$rel" "$scen" add-bsp-layers \
                "bitbake-layers add-layer ../meta-raspberrypi ../meta-tegra" || continue
            step "$rel" "$scen" show-layers "bitbake-layers show-layers" || continue
            step "$rel" "$scen" parse "bitbake -p" || continue
            [ "$QUICK" = 1 ] && continue
            recipes="$(grep -oE 'Parsing of [0-9]+ .bb files complete \([0-9]+ cached, [0-9]+ parsed\)\. [0-9]+ targets, [0-9]+ skipped' "$LAST_LOG" | tail -n1)"
            step "$rel" "$scen" show-appends "bitbake-layers show-appends"
            for a in recipes-kernel/linux/linux-yocto_%.bbappend \
                     dynamic-layers/raspberrypi/recipes-kernel/linux/linux-raspberrypi_%.bbappend \
                     "dynamic-layers/tegra/$rel/recipes-kernel/linux/"; do
                grep -qF "$our/$a" "$LAST_LOG"
                assert "$rel" "$scen" "show-appends: $a applied" $?
            done
            for r in guardian guardian-policies guardian-example-model packagegroup-guardian guardian-image-qemuarm64 linux-yocto; do
                step "$rel" "$scen" "env-$r" "bitbake -e $r"
                [ "$r" = guardian-policies ] && pol_env="$LAST_LOG"
                [ "$r" = linux-yocto ] || continue
                src="$(getvar "$LAST_LOG" SRC_URI)"
                grep -q 'guardian-bpf.cfg' <<<"$src" && grep -q 'guardian-tpm.cfg' <<<"$src"
                assert "$rel" "$scen" "linux-yocto: both guardian fragments in SRC_URI" $?
                grep -qw 'pahole-native' <<<"$(getvar "$LAST_LOG" DEPENDS)"
                assert "$rel" "$scen" "linux-yocto: pahole-native in DEPENDS" $?
            done
            # The README's file:// policy tarball, fetched and unpacked by
            # bitbake, then guardian-policies' do_install command (the
            # layer's signing tool; the host's openssl stands in for
            # openssl-native, which would need a native build) on that S.
            if step "$rel" "$scen" unpack-policies "bitbake guardian-policies -c unpack"; then
                pol_s="$(getvar "$pol_env" S)"
                key="$WORK/artifacts/policy-signing.pem"
                [ -f "$key" ] || openssl genpkey -algorithm ed25519 -out "$key" 2>/dev/null
                rm -rf "$WORK/artifacts/policies-root"
                out="$(python3 "$our/scripts/guardian-manifest.py" policies --tarball "$pol_s" \
                    --sha256 "$pol_sha" --key "$key" --key-variable GUARDIAN_POLICY_SIGNING_KEY \
                    --root "$WORK/artifacts/policies-root" --dir /etc/guardian/policies \
                    --pubkey /etc/guardian/keys/policy-signing.pub model_writer 2>&1)"
                [ -f "$WORK/artifacts/policies-root/etc/guardian/policies/model_writer.wasm.sig" ]
                assert "$rel" "$scen" "guardian-policies: do_install's command finds the file:// tarball bitbake unpacked under S ($(cd "$pol_s" 2>/dev/null && find . -type f | head -n1))" $? "$out"
            fi
            step "$rel" "$scen" graph-image "bitbake -g guardian-image-qemuarm64" && {
                n_recipes="$(wc -l <"$build/pn-buildlist")"
                n_tasks="$(grep -c -- '->' "$build/task-depends.dot" 2>/dev/null || echo '?')"
                grep -qx guardian "$build/pn-buildlist"
                assert "$rel" "$scen" "the image's graph builds guardian ($n_recipes recipes)" $?
            }
            step "$rel" "$scen" dry-run-image "bitbake -n guardian-image-qemuarm64" && {
                tasks="$(grep -oE 'Tasks Summary: Attempted [0-9]+ tasks' "$LAST_LOG" | tail -n1)"
                say "      figures: $recipes; image: ${n_recipes:-?} recipes, ${tasks:-?} (dependency edges: ${n_tasks:-?})"
            }
            ;;
        nofeature|corefeature)
            in_env "$rel" "$build" "bitbake-layers add-layer '$our'" >"$WORK/logs/$rel/$scen-setup.log" 2>&1
            {
                local_conf_common
                [ "$scen" = corefeature ] && echo 'DISTRO_FEATURES:append = " guardian"'
            } >>"$build/conf/local.conf"
            if [ "$scen" = nofeature ]; then
                step "$rel" "$scen" parse "bitbake -p" || continue
                step "$rel" "$scen" env-linux-yocto "bitbake -e linux-yocto" || continue
                ! grep -q 'guardian' <<<"$(getvar "$LAST_LOG" SRC_URI) $(getvar "$LAST_LOG" DEPENDS)"
                assert "$rel" "$scen" "linux-yocto untouched without the feature" $?
            else
                log="$WORK/logs/$rel/$scen/01-parse-must-refuse.log"
                mkdir -p "$(dirname "$log")"
                in_env "$rel" "$build" "bitbake -p" >"$log" 2>&1
                rc=$?
                [ "$rc" -ne 0 ] && grep -qE "(^|\.\.\.)ERROR: .*needs pahole-native.*add meta-openembedded/meta-oe" "$log"
                assert "$rel" "$scen" "feature on without meta-oe: parse refused naming meta-oe (rc=$rc)" $? \
                    "$(grep -m3 '^ERROR' "$log")"
            fi
            ;;
        boards)
            blayers="$(readme_block boards-bblayers docs/boards.md)"
            bconf="$(readme_block boards-local.conf docs/boards.md)"
            if [ -z "$blayers" ] || [ -z "$bconf" ]; then
                assert "$rel" "$scen" "docs/boards.md has the marked bblayers and local.conf blocks" 1; continue
            fi
            step "$rel" "$scen" init "true" || continue
            # shellcheck disable=SC2016 # bitbake expands ${TOPDIR}
            printf 'BBPATH = "${TOPDIR}"\nBBFILES ?= ""\n%s\n' "$blayers" >"$build/conf/bblayers.conf"
            { local_conf_common; printf '%s\n' "$bconf" | fill; } >>"$build/conf/local.conf"
            step "$rel" "$scen" show-layers "bitbake-layers show-layers" || continue
            step "$rel" "$scen" distro-features "bitbake-getvar --value DISTRO_FEATURES" || continue
            grep -qw guardian "$LAST_LOG" && grep -qw tpm2 "$LAST_LOG"
            assert "$rel" "$scen" "DISTRO_FEATURES has guardian and tpm2" $?
            ;;
        kas) kas_check "$rel" "${bbref#refs/heads/}" ;;
        *) say "unknown scenario $scen"; exit 2 ;;
        esac
    done
    say "      $rel: $((SECONDS - t_rel)) s"
done
say "logs: $WORK/logs; summary: $SUMMARY"
exit "$failed"
