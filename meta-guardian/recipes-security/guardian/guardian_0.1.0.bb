SUMMARY = "Integrity guardian for AI inference on edge boards"
DESCRIPTION = "guardian protects deployed AI models: eBPF programs (BPF LSM, \
               or cgroup programs and fanotify where BPF LSM is missing) \
               refuse or report changes to protected model files, a boot step \
               measures the models named in a signed manifest into a TPM \
               PCR, and TPM quotes let a remote verifier check them."
HOMEPAGE = "https://github.com/guardian-edge/guardian"
BUGTRACKER = "https://github.com/guardian-edge/guardian/issues"
SECTION = "security"
# No CPE has been assigned yet; this is the name cve-check will match.
CVE_PRODUCT = "guardian-edge:guardian"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

DEPENDS = "tpm2-tss"
# A target daemon (it loads eBPF into the running kernel and talks to its
# TPM): no native or SDK variant, hence no BBCLASSEXTEND.

# --- Source -----------------------------------------------------------------
# The builder chooses the revision: set GUARDIAN_SRCREV (a full commit id of
# the guardian repository, e.g. the one tagged v${PV}) in local.conf or the
# distro config. There is deliberately no default and no AUTOREV: an image
# must be reproducible from its configuration. GUARDIAN_GIT_URI can point at
# a mirror or a fork.
GUARDIAN_GIT_URI ?= "git://github.com/guardian-edge/guardian.git;protocol=https;branch=main"
GUARDIAN_SRCREV ?= ""

# The eBPF object. It is built by the guardian project's own build (a pinned
# nightly Rust + bpf-linker, which no Yocto release carries), it is
# architecture-independent (bpfel, one object for every kernel with BTF), and
# guardian/build.rs embeds it when GUARDIAN_EBPF_OBJECT names it, so the agent
# itself builds with the release's stable Rust.
#
# The builder provides it through SRC_URI, as any fetchable URI, with its
# SHA-256:
#   GUARDIAN_EBPF_URI = "https://example.com/guardian-ebpf-0.1.0.o"
#   or GUARDIAN_EBPF_URI = "file:///srv/artifacts/guardian-ebpf-0.1.0.o"
#   GUARDIAN_EBPF_SHA256 = "<sha256sum of that file>"
# A remote URI is verified by the fetcher (SRC_URI[ebpf.sha256sum]); bitbake
# does not checksum file:// URIs, so do_compile checks the digest again
# itself whatever the URI. The digest must come from the place that built the
# object (its release notes, or `sha256sum` next to the build), never from
# the file just downloaded.
GUARDIAN_EBPF_URI ?= ""
GUARDIAN_EBPF_SHA256 ?= ""

SRC_URI = "${GUARDIAN_GIT_URI} \
           ${@'%s;name=ebpf;subdir=guardian-ebpf' % d.getVar('GUARDIAN_EBPF_URI') if d.getVar('GUARDIAN_EBPF_URI') else ''} \
           file://guardian.init \
           file://guardian-install.list \
           file://guardian-install.sh \
           "
SRC_URI[ebpf.sha256sum] = "${GUARDIAN_EBPF_SHA256}"
SRCREV = "${GUARDIAN_SRCREV}"

# The crates the agent links, generated from the repository's Cargo.lock by
# scripts/gen-crates-inc.py. It must describe the same Cargo.lock as
# GUARDIAN_SRCREV: regenerate it when moving to a revision whose Cargo.lock
# differs (cargo --frozen stops the build otherwise).
require guardian-crates.inc

inherit cargo systemd update-rc.d pkgconfig

# A workspace: build only the agent (guardian/Cargo.toml); the workspace's
# Cargo.lock at the top of the source tree is used.
CARGO_SRC_DIR = "guardian"

# No unwind tables for the agent's own code: its release profile aborts on
# panic, so nothing unwinds, and they were 0.2 MB of the binary's 8 MiB
# budget (docs/footprint.md). The repository's .cargo/config.toml gives its
# own cross builds the same flag.
RUSTFLAGS:append = " -Cforce-unwind-tables=no"

# Refuse to parse into a build (a clear "skipped" reason, not a fetch error)
# until the builder has said what to build. An anonymous function is the only
# place a recipe can skip itself with a message.
# nooelint: oelint.task.noanonpython
python __anonymous() {
    # tpm2-tss comes from meta-tpm, only recommended by layer.conf (which
    # bitbake does not warn about): say so here rather than "Nothing
    # PROVIDES tpm2-tss" at build time.
    if "tpm-layer" not in (d.getVar("BBFILE_COLLECTIONS") or "").split():
        raise bb.parse.SkipRecipe("needs meta-security/meta-tpm (tpm2-tss) in BBLAYERS, "
                                  "with meta-oe and meta-python, which meta-tpm needs")
    missing = [v for v in ("GUARDIAN_SRCREV", "GUARDIAN_EBPF_URI", "GUARDIAN_EBPF_SHA256")
               if not d.getVar(v)]
    if missing:
        raise bb.parse.SkipRecipe("set %s (see the comments in guardian_%s.bb)"
                                  % (", ".join(missing), d.getVar("PV")))
}

do_compile:prepend() {
    ebpf_objects="$(find "${UNPACKDIR}/guardian-ebpf" -type f)"
    if [ -z "$ebpf_objects" ] || [ "$(printf '%s\n' "$ebpf_objects" | wc -l)" -ne 1 ]; then
        bbfatal "expected exactly one prebuilt eBPF object under ${UNPACKDIR}/guardian-ebpf, found: $ebpf_objects"
    fi
    if ! printf '%s  %s\n' "${GUARDIAN_EBPF_SHA256}" "$ebpf_objects" | sha256sum --check --status; then
        bbfatal "$ebpf_objects does not match GUARDIAN_EBPF_SHA256 (${GUARDIAN_EBPF_SHA256})"
    fi
    export GUARDIAN_EBPF_OBJECT="$ebpf_objects"
}

# What goes where is files/guardian-install.list, which the project's qemu
# test image reads too (one list, so the tested layout is the shipped one).
# Its entries for systemd and sysvinit apply with those distro features.
GUARDIAN_INIT_FEATURES = "${@bb.utils.filter('DISTRO_FEATURES', 'systemd sysvinit', d)}"

do_install() {
    features=""
    for f in ${GUARDIAN_INIT_FEATURES}; do
        features="$features --feature $f"
    done
    sh ${UNPACKDIR}/guardian-install.sh install ${UNPACKDIR}/guardian-install.list ${D} \
        --var bindir=${bindir} \
        --var sysconfdir=${sysconfdir} \
        --var systemd_system_unitdir=${systemd_system_unitdir} \
        --var INIT_D_DIR=${INIT_D_DIR} \
        --source build=${B}/target/${CARGO_TARGET_SUBDIR} \
        --source src=${S} \
        --source files=${UNPACKDIR} \
        $features
}

SYSTEMD_SERVICE:${PN} = "guardian-measure.service guardian.service"

# sysvinit fallback: one script runs the measurement, then starts the guard.
# Early (S 05) so it is up before an inference service at the default 20.
INITSCRIPT_NAME = "guardian"
INITSCRIPT_PARAMS = "start 05 2 3 4 5 . stop 95 0 1 6 ."

CONFFILES:${PN} = "${sysconfdir}/guardian/guardian.toml"

# The agent reads vmlinux BTF and needs BPF, BPF LSM and TPM support in the
# kernel: see recipes-kernel/linux/guardian-kernel-config.inc.
RRECOMMENDS:${PN} = "tpm2-tools"
