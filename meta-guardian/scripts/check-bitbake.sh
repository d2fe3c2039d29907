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
#   --scenario S  readme, boards, rpi, jetson, nofeature, corefeature, kas
#                 (repeatable; default all)
#   --work DIR    work area, reused between runs so bitbake's parse cache
#                 is (default /var/tmp/guardian-check-bitbake)
#   --user NAME   when run as root, the unprivileged user bitbake runs as
#                 (created if missing; default guardian-bb): bitbake
#                 refuses to run as root
#   --threads N   BB_NUMBER_PARSE_THREADS (default 1)
#   --quick       readme scenario: stop after bitbake -p and the guardian
#                 fetch/unpack (test-check-bitbake.sh)
#   --guardian-repo DIR  the guardian git work tree whose source the readme
#                 scenario fetches (default: the one this layer sits in)
#
# The layer checked is the one this script sits in, copied to
# WORK/RELEASE/guardian/meta-guardian, so that the README's relative paths
# (../meta-openembedded/..., ../guardian/meta-guardian) hold from the build
# directory WORK/RELEASE/build-SCENARIO.
#
# Scenarios, each a build directory, every bitbake run with
# BB_NO_NETWORK = "1" (MACHINE = "qemuarm64" unless a block sets another):
#   readme       oe-init-build-env, then the README's "layers" command block
#                and its local.conf block (marked <!-- check-bitbake: ... -->
#                in README.md; placeholders filled with dummy values), plus
#                meta-raspberrypi and meta-tegra for the dynamic layers,
#                INIT_MANAGER = "systemd" and the check's own layer (below):
#                show-layers, show-appends (our appends on linux-yocto,
#                linux-raspberrypi and the tegra kernel), bitbake -p,
#                bitbake guardian -c fetch and -c unpack of the guardian
#                source itself (below), bitbake -e of each of our recipes
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
#   rpi, jetson  docs/boards.md's Raspberry Pi (MACHINE raspberrypi4-64,
#                and the same block with raspberrypi5) and Jetson blocks:
#                the qemuarm64 BBLAYERS plus the board's BBLAYERS line, the
#                board's local.conf block with the qemuarm64 block's
#                GUARDIAN_* lines: show-layers, bitbake -p, bitbake -e
#                guardian (not skipped), bitbake -e virtual/kernel (our
#                fragments in the board kernel's SRC_URI; on the Pi the TPM
#                overlay in KERNEL_DEVICETREE), every variable the block
#                sets read by some layer of the build (a misspelt variable
#                parses silently), bitbake -g core-image-minimal (guardian
#                and every package the block installs in the graph). A
#                block marked "releases=..." is checked on those releases
#                only, and the check says loudly which it did not check; so
#                it does when the BSP layer has no branch for the release.
#   nofeature    oe-core + meta-guardian only, no "guardian" distro
#                feature: bitbake -p, and linux-yocto untouched (no guardian
#                fragment in its SRC_URI).
#   corefeature  oe-core + meta-guardian only, the feature on: bitbake -p
#                must stop with our message naming meta-oe.
#   kas          each kas/*.yml whose openembedded-core branch is the
#                release, with kas (pinned, in WORK/kas-venv, from PyPI the
#                first time) and an overlay pointing each of its repos' url
#                at the local git repository (same branches) and adding
#                BB_NO_NETWORK (a local_conf_header "zz-check-bitbake"):
#                `kas dump` (schema, includes, checkouts), its bitbake
#                branch equal to the one BB_MIN_VERSION picks, then, as the
#                unprivileged user in the build directory kas set up, with
#                the GUARDIAN_* variables exported as boards.md says:
#                `kas shell -c 'bitbake-layers show-layers'` (layer
#                dependencies), `kas shell -c 'bitbake -p'` and `kas shell -c
#                'bitbake -g TARGET'` (the file's target, guardian in it).
#
# The guardian source (readme scenario): the recipe's own override
# variables, GUARDIAN_GIT_URI and GUARDIAN_SRCREV, set by a bbappend in a
# small layer the check writes (WORK/RELEASE/check-layer, collection
# "guardian-check"; a bbappend rather than local.conf so that a new commit
# reparses one recipe, not every recipe), pointing at WORK/guardian.git
# over protocol=file: a bare repository holding the commit under test,
# i.e. HEAD of the guardian work tree, plus its uncommitted changes to
# tracked files as a commit of their own (branch "check"). DL_DIR holds
# the .crate files `cargo fetch --locked` brings into the cargo cache
# (${CARGO_HOME:-~/.cargo}; crates.io the first time, run as the calling
# user), copied under the names bitbake's crate fetcher stores
# (NAME-VERSION.crate). bitbake then fetches offline and verifies every
# crate against the SRC_URI[NAME-VERSION.sha256sum] of guardian-crates.inc;
# after -c unpack, the unpacked tree must be that commit and host cargo
# (`cargo metadata --frozen`, crates.io replaced by the directory bitbake
# vendored the crates into, as cargo_common.bbclass configures it) must
# resolve the whole workspace from it, checksums included.
#
# Build directories: WORK/RELEASE/build-SCENARIO (rpi: build-rpi-MACHINE;
# jetson: build-jetson-orin-nano-devkit), and kas's WORK/kas/w-FILE/build,
# each kept for bitbake's parse cache (conf/ is rewritten every run). In a
# fresh one bitbake 2.16/2.18 parse every recipe twice: the first parse is
# saved under a configuration hash the second command does not compute
# again (the python module dependencies in that hash, oe.spdx*'s var_execs,
# come out otherwise once the codeparser cache holds what the recipe parse
# put there); from the third command on the cache holds.
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
GUARDIAN_REPO=""
while [ $# -gt 0 ]; do
    case "$1" in
        --release) RELEASES+=("$2"); shift 2 ;;
        --scenario) SCENARIOS+=("$2"); shift 2 ;;
        --work) WORK="$2"; shift 2 ;;
        --user) RUNAS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --guardian-repo) GUARDIAN_REPO="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) SOURCES="$1"; shift ;;
    esac
done
[ -n "$SOURCES" ] || { echo "usage: $0 [options] SOURCES_DIR (see $0 --help)" >&2; exit 2; }
SOURCES="$(readlink -f "$SOURCES")"
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(readme boards rpi jetson nofeature corefeature kas)
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
    local rel="$1" bbbr="$2" kw="$WORK/kas" venv="$WORK/kas-venv" kf b ov rc dumped target
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
        "$venv/bin/python3" - "$kw/guardian" "meta-guardian/kas/$b.yml" "$ov" "$SOURCES" "$THREADS" >/dev/null <<'PY' || { say "FAIL  [$rel/kas] $b.yml: unreadable"; failed=1; continue; }
import glob, os, sys, yaml
root, top, out, sources, threads = sys.argv[1:6]
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
# The check's own settings, last in local.conf (kas sorts the headers).
conf = ('BB_NO_NETWORK = "1"\nBB_NUMBER_PARSE_THREADS = "%s"\n'
        'BB_NUMBER_THREADS = "1"\nPARALLEL_MAKE = "-j 1"\nBB_DISKMON_DIRS = ""\n' % threads)
yaml.safe_dump({"header": {"version": 14}, "repos": over,
                "local_conf_header": {"zz-check-bitbake": conf}}, open(out, "w"))
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
        target="$(sed -n 's/^target: *//p' "$log" | head -n1)"
        kas_step "$rel" "$b" show-layers "bitbake-layers show-layers" || continue
        grep -q '^guardian ' "$LAST_LOG"
        assert "$rel" kas "$b.yml: meta-guardian among the layers kas set up" $?
        # A parse in the build directory kas wrote (its bblayers.conf and
        # local.conf), with the builder's variables exported as
        # docs/boards.md says; then the file's target resolved.
        kas_step "$rel" "$b" parse "bitbake -p" || continue
        if [ -n "$target" ]; then
            kas_step "$rel" "$b" graph "bitbake -g $target" && {
                grep -qx guardian "$kw/w-$b/build/pn-buildlist"
                assert "$rel" kas "$b.yml: $target's graph builds guardian ($(wc -l <"$kw/w-$b/build/pn-buildlist") recipes)" $?
            }
        else
            assert "$rel" kas "$b.yml: names a target" 1
        fi
    done
}

# kas_step REL KASFILE NAME CMD: `kas shell KASFILE -c CMD` (with the
# local-urls overlay) as the unprivileged user, judged like a step.
kas_step() {
    local rel="$1" b="$2" name="$3" cmd="$4" log t0=$SECONDS rc
    log="$WORK/logs/$rel/kas/$b-$name.log"
    as_user "cd '$kw/guardian' && KAS_WORK_DIR='$kw/w-$b' \
        GUARDIAN_SRCREV=0123456789abcdef0123456789abcdef01234567 \
        GUARDIAN_EBPF_URI='file://$art/guardian-ebpf-0.1.0.o' GUARDIAN_EBPF_SHA256='$ebpf_sha' \
        GUARDIAN_MANIFEST_SIGNING_KEY=/secure/keys/model-signing.pem \
        '$venv/bin/kas' shell 'meta-guardian/kas/$b.yml:local-urls-$b.yml' -c '$cmd'" >"$log" 2>&1
    rc=$?
    judged "$rel" kas "$b.yml: kas shell -c '$cmd'" "$log" "$rc" "$t0"
}

# step REL SCEN NAME CMD: run, log, judge. Sets LAST_LOG.
STEPNO=0
LAST_LOG=""
step() {
    local rel="$1" scen="$2" name="$3" cmd="$4" log rc t0
    STEPNO=$((STEPNO + 1))
    log="$WORK/logs/$rel/$scen/$(printf '%02d' "$STEPNO")-$name.log"
    mkdir -p "$(dirname "$log")"
    t0=$SECONDS
    { echo "+ $cmd"; in_env "$rel" "$WORK/$rel/build-$scen" "$cmd"; } >"$log" 2>&1
    rc=$?
    judged "$rel" "$scen" "$name" "$log" "$rc" "$t0"
}

# judged REL SCEN NAME LOG RC T0: PASS or FAIL a finished run from its exit
# status and log. Sets LAST_LOG.
judged() {
    local rel="$1" scen="$2" name="$3" log="$4" rc="$5" t0="$6" bad
    LAST_LOG="$log"
    # Ours: a WARNING naming our layer's path or a guardian recipe, once
    # the work area's own path (which may say "guardian") is taken out.
    # (bitbake may print a message on its "Parsing recipes..." line; kas
    # logs its own errors as "... - ERROR - ...".)
    bad="$(grep -E '(^|\.\.\.)(ERROR|FATAL|CRITICAL):| - (ERROR|CRITICAL) ' "$log"
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

# not_checked REL SCEN WHY: a part of the check that could not run, said
# loudly here and again at the end (it is neither a PASS nor a FAIL).
NOT_CHECKED=()
not_checked() {
    say "NOT CHECKED  [$1/$2] $3"
    NOT_CHECKED+=("[$1/$2] $3")
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

# write_if_changed FILE: stdin into FILE, leaving FILE (and its mtime, which
# bitbake's parse cache goes by) alone when the content is the same.
write_if_changed() {
    local tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mkdir -p "$(dirname "$1")" && mv "$tmp" "$1" && chmod 644 "$1"; fi
}

# crates_of INC: NAME-VERSION of every crate:// entry of a crates include
crates_of() { sed -n 's|^ *crate://crates\.io/\([^/ ]*\)/\([^/ \\]*\).*|\1-\2|p' "$1"; }

# --- the guardian source under test (readme scenario: fetch and unpack) -----------
GREPO="$WORK/guardian.git"
GUARDIAN_COMMIT=""
SRC_PROBLEM=""
prepare_guardian_source() {
    local top head commit idx tree log cache c f n=0 copied=0 missing=""
    top="$GUARDIAN_REPO"
    [ -n "$top" ] || top="$(G -C "$layer" rev-parse --show-toplevel 2>/dev/null)"
    if [ -z "$top" ] || ! G -C "$top" rev-parse -q --verify HEAD >/dev/null 2>&1; then
        SRC_PROBLEM="no guardian git work tree: the layer is not inside one and --guardian-repo was not given"
        return 1
    fi
    top="$(readlink -f "$top")"
    [ -d "$GREPO" ] || G init -q --bare "$GREPO" || { SRC_PROBLEM="cannot create $GREPO"; return 1; }
    head="$(G -C "$top" rev-parse HEAD)"
    G --git-dir="$GREPO" fetch -q --no-tags "$top" "+HEAD:refs/heads/head" \
        || { SRC_PROBLEM="cannot fetch HEAD of $top into $GREPO"; return 1; }
    commit="$head"
    # Uncommitted changes to tracked files: a commit of their own, made in
    # the check's repository only (a temporary index; fixed dates, so the
    # same changes give the same commit and bitbake nothing new to fetch).
    if [ -n "$(G -C "$top" status --porcelain --untracked-files=no)" ]; then
        idx="$WORK/guardian.index"
        rm -f "$idx"
        if GIT_INDEX_FILE="$idx" G --git-dir="$GREPO" read-tree "$head" \
            && GIT_INDEX_FILE="$idx" G --git-dir="$GREPO" --work-tree="$top" add -u \
            && tree="$(GIT_INDEX_FILE="$idx" G --git-dir="$GREPO" write-tree)" \
            && commit="$(GIT_AUTHOR_DATE='@0 +0000' GIT_COMMITTER_DATE='@0 +0000' \
                G -c user.name=check-bitbake -c user.email=check-bitbake@localhost --git-dir="$GREPO" \
                commit-tree "$tree" -p "$head" -m "check-bitbake.sh: uncommitted changes of $top")"; then
            rm -f "$idx"
        else
            SRC_PROBLEM="cannot commit the uncommitted changes of $top into $GREPO"; return 1
        fi
    fi
    G --git-dir="$GREPO" update-ref refs/heads/check "$commit" && G --git-dir="$GREPO" symbolic-ref HEAD refs/heads/check
    GUARDIAN_COMMIT="$commit"
    if [ "$commit" = "$head" ]; then
        say "      guardian source: $top at $commit"
    else
        say "      guardian source: $top at $head + its uncommitted changes, as $commit"
    fi
    # The crates: `cargo fetch --locked` on that commit's Cargo.lock (into
    # the calling user's cargo cache), then copied into DL_DIR under the
    # names bitbake's crate fetcher uses.
    export_tree "$GREPO" "$commit" "$WORK/guardian-src" || { SRC_PROBLEM="cannot export $commit"; return 1; }
    command -v cargo >/dev/null || { SRC_PROBLEM="cargo not found: it fills DL_DIR with the crates (cargo fetch --locked)"; return 1; }
    log="$WORK/logs/cargo-fetch.log"
    if ! cargo fetch --locked --manifest-path "$WORK/guardian-src/Cargo.toml" >"$log" 2>&1; then
        SRC_PROBLEM="cargo fetch --locked failed (crates.io or a warm cargo cache needed): $(tail -n 3 "$log" | tr '\n' ' ')"
        return 1
    fi
    cache="${CARGO_HOME:-$HOME/.cargo}/registry/cache"
    mkdir -p "$WORK/downloads"
    # What an earlier run's bad checksum made bitbake set aside.
    rm -f "$WORK/downloads/"*.crate_bad-checksum_*
    while read -r c; do
        n=$((n + 1))
        f="$(find "$cache" -mindepth 2 -maxdepth 2 -name "$c.crate" 2>/dev/null | head -n1)"
        if [ -z "$f" ]; then missing="$missing $c"; continue; fi
        cmp -s "$f" "$WORK/downloads/$c.crate" || { cp "$f" "$WORK/downloads/$c.crate" && copied=$((copied + 1)); }
    done < <(crates_of "$layer/recipes-security/guardian/guardian-crates.inc")
    say "      crates: $n in guardian-crates.inc, $copied (re)copied into DL_DIR from $cache${missing:+; NOT in the cargo cache after cargo fetch --locked (so not in Cargo.lock):$missing}"
}

# write_check_layer REL: the check's own layer, "guardian-check": one
# bbappend that points the guardian recipe at the source under test
# through the recipe's own variables.
write_check_layer() {
    local d="$WORK/$1/check-layer"
    # shellcheck disable=SC2016 # bitbake expands ${LAYERDIR}
    write_if_changed "$d/conf/layer.conf" <<EOF
# Written by meta-guardian/scripts/check-bitbake.sh: the check's overrides.
BBPATH .= ":\${LAYERDIR}"
BBFILES += "\${LAYERDIR}/recipes-*/*/*.bbappend"
BBFILE_COLLECTIONS += "guardian-check"
BBFILE_PATTERN_guardian-check = "^\${LAYERDIR}/"
BBFILE_PRIORITY_guardian-check = "99"
LAYERDEPENDS_guardian-check = "guardian"
LAYERSERIES_COMPAT_guardian-check = "$1"
EOF
    write_if_changed "$d/recipes-security/guardian/guardian_%.bbappend" <<EOF
# Written by meta-guardian/scripts/check-bitbake.sh: the guardian source
# under test, a local repository over protocol=file (no network), through
# the recipe's documented variables (a bbappend rather than local.conf, so
# that a new commit reparses this recipe only).
GUARDIAN_GIT_URI = "git://$GREPO;protocol=file;branch=check"
GUARDIAN_SRCREV = "$GUARDIAN_COMMIT"
EOF
}

# fetch_guardian REL SCEN: bitbake guardian -c fetch and -c unpack from the
# local sources, and what the unpacked tree must be.
fetch_guardian() {
    local rel="$1" scen="$2" env inc c n=0 done_n=0 s vend k out ch
    if [ -n "$SRC_PROBLEM" ]; then
        assert "$rel" "$scen" "guardian -c fetch/-c unpack from local sources" 1 "$SRC_PROBLEM"
        return 1
    fi
    step "$rel" "$scen" env-guardian-source "bitbake -e guardian" || return 1
    env="$LAST_LOG"
    [ "$(getvar "$env" SRCREV)" = "$GUARDIAN_COMMIT" ] && grep -qF "git://$GREPO;protocol=file;branch=check" <<<"$(getvar "$env" SRC_URI)"
    assert "$rel" "$scen" "the check layer's bbappend points the recipe at $GREPO, commit ${GUARDIAN_COMMIT:0:12}" $?
    step "$rel" "$scen" fetch-guardian "bitbake guardian -c fetch" || return 1
    # A crate's done stamp is written once its checksum verified.
    inc="$our/recipes-security/guardian/guardian-crates.inc"
    while read -r c; do
        n=$((n + 1))
        [ -f "$WORK/downloads/$c.crate.done" ] && done_n=$((done_n + 1))
    done < <(crates_of "$inc")
    [ "$n" -gt 0 ] && [ "$done_n" = "$n" ]
    assert "$rel" "$scen" "fetch: all $n crates of guardian-crates.inc verified against their sha256 ($done_n done stamps)" $?
    step "$rel" "$scen" unpack-guardian "bitbake guardian -c unpack" || return 1
    s="$(getvar "$env" S)"
    vend="$(getvar "$env" CARGO_VENDORING_DIRECTORY)"
    [ "$(G -C "$s" rev-parse HEAD 2>/dev/null)" = "$GUARDIAN_COMMIT" ] && cmp -s "$s/Cargo.lock" "$WORK/guardian-src/Cargo.lock" \
        && [ -f "$s/$(getvar "$env" CARGO_SRC_DIR)/Cargo.toml" ]
    assert "$rel" "$scen" "unpack: S (${s#"$WORK/"}) is the commit under test, with Cargo.lock and CARGO_SRC_DIR's Cargo.toml" $?
    k="$(find "$vend" -mindepth 2 -maxdepth 2 -name .cargo-checksum.json 2>/dev/null | wc -l)"
    [ "$k" = "$n" ] && [ -n "$(find "$(getvar "$env" UNPACKDIR)/guardian-ebpf" -type f 2>/dev/null)" ]
    assert "$rel" "$scen" "unpack: $k of $n crates vendored into CARGO_VENDORING_DIRECTORY, the eBPF object under guardian-ebpf/" $?
    # cargo itself, with crates.io replaced by that directory as
    # cargo_common.bbclass's do_configure writes it: the whole workspace
    # resolves offline and every vendored crate's checksum is Cargo.lock's.
    ch="$WORK/artifacts/cargo-home-vendored"
    mkdir -p "$ch"
    printf '[source.bitbake]\ndirectory = "%s"\n\n[source.crates-io]\nreplace-with = "bitbake"\nlocal-registry = "/nonexistent"\n' "$vend" >"$ch/config.toml"
    out="$(CARGO_HOME="$ch" cargo metadata --frozen --format-version 1 --manifest-path "$s/Cargo.toml" 2>&1 >/dev/null)"
    assert "$rel" "$scen" "cargo metadata --frozen resolves the workspace from the crates bitbake vendored" $? "$(tail -n 5 <<<"$out")"
}

# vars_read REL SCEN BLOCK LAYERS_LOG: every variable BLOCK assigns is read
# (as \${VAR}, getVar('VAR'...) or contains('VAR'...) and the like) by a file of a layer
# listed in LAYERS_LOG (a show-layers log): a misspelt variable parses and
# does nothing, silently.
vars_read() {
    local rel="$1" scen="$2" block="$3" dirs v unread=""
    read -r -a dirs <<<"$(awk 'f && NF >= 3 && $2 ~ /^\// { print $2 } /^layer +path/ { f = 1 }' "$4" | tr '\n' ' ')"
    [ ${#dirs[@]} -gt 0 ] || { assert "$rel" "$scen" "the block's variables are read by a layer (no layers in $4)" 1; return 1; }
    while read -r v; do
        [ -n "$v" ] || continue
        grep -rqsE --include='*.bb' --include='*.bbappend' --include='*.bbclass' --include='*.inc' --include='*.conf' --include='*.py' \
            "\\\$\\{${v}\\}|getVar\\(['\"]${v}['\"]|(contains|contains_any|filter|conditional|vartrue)\\(['\"]${v}['\"]" "${dirs[@]}" || unread="$unread $v"
    done < <(sed -nE 's/^(export[[:space:]]+)?([A-Za-z0-9_]+)(:[A-Za-z0-9_-]+)*[[:space:]]*(\?\?=|\?=|:=|\+=|=\+|\.=|=\.|=).*/\2/p' <<<"$block" | sort -u)
    [ -z "$unread" ]
    assert "$rel" "$scen" "every variable the block sets is read by a layer of the build" $? "read nowhere:$unread"
}

# board_check REL SCEN MACHINE BSP BLAYERS_MARKER CONF_MARKER: one
# docs/boards.md board (rpi and jetson scenarios).
board_check() {
    local rel="$1" scen="$2" machine="$3" bsp="$4" lm="$5" cm="$6" build rels compat base blayers bconf gl conf bm kern src dtbo pk missing=""
    build="$WORK/$rel/build-$scen"
    rels="$(grep -m1 -F "<!-- check-bitbake: $cm " "$layer/docs/boards.md" | sed -n 's/.* releases=\([^ ]*\).*/\1/p' | tr ',' ' ')"
    if [ -n "$rels" ] && ! grep -qw "$rel" <<<"$rels"; then
        not_checked "$rel" "$scen" "docs/boards.md's $cm block is for $rels only (releases= in its marker): $machine NOT checked on $rel"
        return 0
    fi
    compat="$(sed -n 's/^LAYERSERIES_COMPAT_[^ ]* *= *"\(.*\)"/\1/p' "$WORK/$rel/$bsp/conf/layer.conf")"
    if ! grep -qw "$rel" <<<"$compat"; then
        not_checked "$rel" "$scen" "$bsp has no branch for $rel (its layer.conf says LAYERSERIES_COMPAT \"$compat\"): $machine NOT checked on $rel"
        return 0
    fi
    base="$(readme_block boards-bblayers docs/boards.md)"
    blayers="$(readme_block "$lm" docs/boards.md)"
    bconf="$(readme_block "$cm" docs/boards.md)"
    gl="$(readme_block boards-local.conf docs/boards.md | grep '^GUARDIAN_')"
    if [ -z "$base" ] || [ -z "$blayers" ] || [ -z "$bconf" ] || [ -z "$gl" ]; then
        assert "$rel" "$scen" "docs/boards.md has the marked boards-bblayers, $lm, $cm and boards-local.conf blocks" 1
        return 1
    fi
    rm -rf "$build/conf"
    step "$rel" "$scen" init "true" || return 1
    # shellcheck disable=SC2016 # bitbake expands ${TOPDIR}
    printf 'BBPATH = "${TOPDIR}"\nBBFILES ?= ""\n%s\n%s\n' "$base" "$blayers" >"$build/conf/bblayers.conf"
    # The block as written, but for a MACHINE the block says it also
    # serves ("# or ...").
    conf="$bconf"
    bm="$(sed -n 's/^MACHINE = "\([^"]*\)".*/\1/p' <<<"$bconf")"
    # shellcheck disable=SC2001 # a line of a multi-line block
    [ "$bm" = "$machine" ] || conf="$(sed "s/^MACHINE = .*/MACHINE = \"$machine\"/" <<<"$bconf")"
    {
        local_conf_common
        echo "# --- docs/boards.md's $cm block${bm:+ (MACHINE $machine)}, then the"
        echo "# --- qemuarm64 block's GUARDIAN_* lines, placeholders filled ---"
        printf '%s\n%s\n' "$conf" "$gl" | fill
    } >>"$build/conf/local.conf"
    step "$rel" "$scen" show-layers "bitbake-layers show-layers" || return 1
    vars_read "$rel" "$scen" "$conf" "$LAST_LOG"
    step "$rel" "$scen" parse "bitbake -p" || return 1
    step "$rel" "$scen" env-guardian "bitbake -e guardian"
    if step "$rel" "$scen" env-kernel "bitbake -e virtual/kernel"; then
        kern="$(getvar "$LAST_LOG" PN) $(getvar "$LAST_LOG" PV)"
        src="$(getvar "$LAST_LOG" SRC_URI)"
        grep -q 'guardian-bpf.cfg' <<<"$src" && grep -q 'guardian-tpm.cfg' <<<"$src"
        assert "$rel" "$scen" "$machine's kernel ($kern): both guardian fragments in SRC_URI" $?
        while read -r dtbo; do
            grep -qF "$dtbo" <<<"$(getvar "$LAST_LOG" KERNEL_DEVICETREE)"
            assert "$rel" "$scen" "$machine's kernel builds $dtbo (KERNEL_DEVICETREE)" $?
        done < <(grep -oE 'overlays/[A-Za-z0-9_-]+\.dtbo' <<<"$conf")
    fi
    if step "$rel" "$scen" graph-image "bitbake -g core-image-minimal"; then
        for pk in guardian $(sed -n 's/^IMAGE_INSTALL:append = "\(.*\)"/\1/p' <<<"$conf"); do
            grep -qx "$pk" "$build/pn-buildlist" || missing="$missing $pk"
        done
        [ -z "$missing" ]
        assert "$rel" "$scen" "core-image-minimal's graph ($(wc -l <"$build/pn-buildlist") recipes) builds guardian and the block's IMAGE_INSTALL" $? "not in pn-buildlist:$missing"
    fi
}

# --- per release ------------------------------------------------------------------
t_all=$SECONDS
if [[ " ${SCENARIOS[*]} " == *" readme "* ]]; then
    prepare_guardian_source
    [ -n "$SRC_PROBLEM" ] && say "FAIL  the guardian source for bitbake guardian -c fetch: $SRC_PROBLEM"
fi
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
            # The BSP layers (our dynamic layers), and the check's layer
            # with the guardian source under test.
            check_layer=""
            if [ -z "$SRC_PROBLEM" ]; then
                write_check_layer "$rel"
                check_layer="$WORK/$rel/check-layer"
            fi
            step "$rel" "$scen" add-bsp-layers \
                "bitbake-layers add-layer ../meta-raspberrypi ../meta-tegra $check_layer" || continue
            step "$rel" "$scen" show-layers "bitbake-layers show-layers" || continue
            vars_read "$rel" "$scen" "$conf_block" "$LAST_LOG"
            step "$rel" "$scen" parse "bitbake -p" || continue
            recipes="$(grep -oE 'Parsing of [0-9]+ .bb files complete \([0-9]+ cached, [0-9]+ parsed\)\. [0-9]+ targets, [0-9]+ skipped' "$LAST_LOG" | tail -n1)"
            fetch_guardian "$rel" "$scen"
            [ "$QUICK" = 1 ] && continue
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
            vars_read "$rel" "$scen" "$bconf" "$LAST_LOG"
            step "$rel" "$scen" distro-features "bitbake-getvar --value DISTRO_FEATURES" || continue
            grep -qw guardian "$LAST_LOG" && grep -qw tpm2 "$LAST_LOG"
            assert "$rel" "$scen" "DISTRO_FEATURES has guardian and tpm2" $?
            ;;
        rpi)
            board_check "$rel" "$scen-raspberrypi4-64" raspberrypi4-64 meta-raspberrypi boards-rpi-bblayers boards-rpi-local.conf
            STEPNO=0
            board_check "$rel" "$scen-raspberrypi5" raspberrypi5 meta-raspberrypi boards-rpi-bblayers boards-rpi-local.conf
            ;;
        jetson)
            board_check "$rel" jetson-orin-nano-devkit jetson-orin-nano-devkit meta-tegra boards-jetson-bblayers boards-jetson-local.conf
            ;;
        kas) kas_check "$rel" "${bbref#refs/heads/}" ;;
        *) say "unknown scenario $scen"; exit 2 ;;
        esac
    done
    say "      $rel: $((SECONDS - t_rel)) s"
done
if [ ${#NOT_CHECKED[@]} -gt 0 ]; then
    say "!! NOT CHECKED (${#NOT_CHECKED[@]}): these parts did not run, they are neither PASS nor FAIL:"
    for n in "${NOT_CHECKED[@]}"; do say "!!   $n"; done
fi
say "total: $((SECONDS - t_all)) s; logs: $WORK/logs; summary: $SUMMARY"
exit "$failed"
