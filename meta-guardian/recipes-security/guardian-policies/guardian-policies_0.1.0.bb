SUMMARY = "Signed example policies for guardian"
DESCRIPTION = "The guardian project's example WebAssembly policies \
               (model-writer allowlist, service exec/LD_PRELOAD, egress \
               allowlist, rate anomaly), signed at build time with the \
               builder's key and installed as NAME.wasm + NAME.wasm.sig in \
               guardian's [policy] dir."
HOMEPAGE = "https://github.com/guardian-edge/guardian"
BUGTRACKER = "https://github.com/guardian-edge/guardian/issues"
SECTION = "security"
# No CPE: examples, not a product.
CVE_PRODUCT = ""
LICENSE = "Apache-2.0"
# The tarball carries the modules only; they are built from the guardian
# repository (Apache-2.0), whose license text oe-core has.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# --- Source -----------------------------------------------------------------
# The modules are built by the guardian project's own build (wasm32, which
# no Yocto release targets) with policies/package.sh, which writes a
# reproducible tarball and its SHA-256. The builder provides it like the
# agent's eBPF object, as any fetchable URI with its SHA-256:
#   GUARDIAN_POLICIES_URI = "file:///srv/artifacts/guardian-policies-0.1.0.tar.gz"
#   GUARDIAN_POLICIES_SHA256 = "<the .sha256 package.sh wrote next to it>"
# A remote URI is verified by the fetcher; bitbake does not checksum file://
# URIs, so do_install checks the digest again itself whatever the URI. The
# tarball is not unpacked by the fetcher, so that check sees its bytes.
# Where it lands under S depends on the URI (a file:// URI keeps its
# directories: S/srv/artifacts/NAME.tar.gz), so do_install takes the one
# file anywhere under S.
GUARDIAN_POLICIES_URI ?= ""
GUARDIAN_POLICIES_SHA256 ?= ""

# The policies to install, by module name (NAME.wasm in the tarball):
# model_writer service_exec egress rate_anomaly exe_allowlist. The examples' rules name
# the demo's paths and addresses; install the ones that fit the product.
GUARDIAN_POLICIES ?= "model_writer"

# The key that signs them, a path on the build host only (never in a
# layer): an unencrypted PEM private key, Ed25519 or ECDSA P-256. By default
# the key that signs the image's model manifest, whose public half
# guardian_manifest.bbclass adds to [measure] trusted_keys, which [policy]
# falls back to when its own trusted_keys is empty.
GUARDIAN_MANIFEST_SIGNING_KEY ??= ""
GUARDIAN_POLICY_SIGNING_KEY ?= "${GUARDIAN_MANIFEST_SIGNING_KEY}"
# guardian's [policy] dir, and where the public half of the key goes.
GUARDIAN_POLICY_DIR ?= "${sysconfdir}/guardian/policies"
GUARDIAN_POLICY_PUBKEY_PATH ?= "${sysconfdir}/guardian/keys/policy-signing.pub"

# Signing runs the layer's one signing code path (also used for the model
# manifest) with the openssl command line.
DEPENDS = "openssl-native"

SRC_URI = "${@'%s;unpack=0;subdir=guardian-policies' % d.getVar('GUARDIAN_POLICIES_URI') if d.getVar('GUARDIAN_POLICIES_URI') else ''}"
SRC_URI[sha256sum] = "${GUARDIAN_POLICIES_SHA256}"
S = "${UNPACKDIR}/guardian-policies"

inherit allarch

GUARDIAN_MANIFEST_TOOL = "${GUARDIAN_LAYERDIR}/scripts/guardian-manifest.py"

# Skip with a message, not a fetch error, until the artifact is named.
# nooelint: oelint.task.noanonpython
python __anonymous() {
    missing = [v for v in ("GUARDIAN_POLICIES_URI", "GUARDIAN_POLICIES_SHA256") if not d.getVar(v)]
    if missing:
        raise bb.parse.SkipRecipe("set %s (see the comments in guardian-policies_%s.bb)"
                                  % (", ".join(missing), d.getVar("PV")))
}

do_configure[noexec] = "1"
do_compile[noexec] = "1"

# The key's path is part of do_install's signature, its contents are not (no
# digest of the private key in the stamps): after replacing the key file in
# place, rebuild with `bitbake -c install -f guardian-policies`.
do_install[file-checksums] += "${GUARDIAN_MANIFEST_TOOL}:True"
do_install[vardeps] += "GUARDIAN_POLICIES GUARDIAN_POLICY_SIGNING_KEY GUARDIAN_POLICIES_SHA256"

do_install() {
    python3 ${GUARDIAN_MANIFEST_TOOL} policies \
        --tarball ${S} \
        --sha256 "${GUARDIAN_POLICIES_SHA256}" \
        --key "${GUARDIAN_POLICY_SIGNING_KEY}" \
        --key-variable GUARDIAN_POLICY_SIGNING_KEY \
        --root ${D} \
        --dir ${GUARDIAN_POLICY_DIR} \
        --pubkey ${GUARDIAN_POLICY_PUBKEY_PATH} \
        ${GUARDIAN_POLICIES} \
        || bbfatal "guardian-policies: no signed policies installed (see the error above)"
}

FILES:${PN} += "${GUARDIAN_POLICY_DIR} ${GUARDIAN_POLICY_PUBKEY_PATH}"
RDEPENDS:${PN} = "guardian"
