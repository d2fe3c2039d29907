# guardian_manifest.bbclass: sign the image's golden model manifest.
#
# For images. After the rootfs is assembled, every digest list that model
# recipes (guardian_model.bbclass) installed is collected, each listed model
# is hashed again as it lies in the rootfs (a file changed after its
# recipe's do_install stops the build, naming it), and one manifest with
# every model is written to ${GUARDIAN_MANIFEST_PATH} with its detached
# signature next to it (<manifest>.sig). The public half of the key is
# installed at ${GUARDIAN_MANIFEST_PUBKEY_PATH} and added to [measure]
# trusted_keys of ${GUARDIAN_MANIFEST_TRUST_CONFIG}, so `guardian measure`
# accepts the manifest at boot. The work is done by
# scripts/guardian-manifest.py with the openssl command line.
#
# In the image recipe (or IMAGE_CLASSES += "guardian_manifest" in the
# distro configuration):
#     inherit guardian_manifest
# and, on the build host only, never in a layer:
#     GUARDIAN_MANIFEST_SIGNING_KEY = "/secure/keys/model-signing.pem"
# (PEM private key, Ed25519 or ECDSA P-256, unencrypted: bitbake has no
# terminal to ask for a passphrase). Without it, do_rootfs fails with a
# message naming the variable.
#
# GUARDIAN_MANIFEST_PCR            the PCR guardian extends (8-15; 14, see
#                                  docs/measured-boot.md)
# GUARDIAN_MANIFEST_TRUST_CONFIG   set to "" when the product's guardian.toml
#                                  already lists its key; the file is then
#                                  left as it is.
#
# The key's path is part of do_rootfs's signature, its contents are not (so
# no digest of the private key ends up in the stamps): after replacing the
# key file in place, rebuild with `bitbake -c rootfs -f <image>` or give the
# new key a new file name.

GUARDIAN_MANIFEST_SIGNING_KEY ??= ""
GUARDIAN_MANIFEST_PCR ?= "14"
GUARDIAN_MANIFEST_PATH ?= "${sysconfdir}/guardian/manifest.toml"
GUARDIAN_MANIFEST_PUBKEY_PATH ?= "${sysconfdir}/guardian/keys/manifest-signing.pub"
GUARDIAN_MANIFEST_TRUST_CONFIG ?= "${sysconfdir}/guardian/guardian.toml"
GUARDIAN_MODEL_DIGESTS_DIR = "${datadir}/guardian/models.d"
GUARDIAN_MANIFEST_TOOL = "${GUARDIAN_LAYERDIR}/scripts/guardian-manifest.py"

ROOTFS_POSTPROCESS_COMMAND += "guardian_manifest_sign"
# extend_recipe_sysroot puts openssl-native on do_rootfs's PATH.
do_rootfs[depends] += "openssl-native:do_populate_sysroot"
do_rootfs[file-checksums] += "${GUARDIAN_MANIFEST_TOOL}:True"
do_rootfs[vardeps] += "GUARDIAN_MANIFEST_SIGNING_KEY GUARDIAN_MANIFEST_PCR GUARDIAN_MANIFEST_PATH \
                       GUARDIAN_MANIFEST_PUBKEY_PATH GUARDIAN_MANIFEST_TRUST_CONFIG"

# A rootfs post-process function, not a task: it has no [doc].
# nooelint: oelint.task.docstrings
guardian_manifest_sign() {
    python3 ${GUARDIAN_MANIFEST_TOOL} sign \
        --root ${IMAGE_ROOTFS} \
        --key "${GUARDIAN_MANIFEST_SIGNING_KEY}" \
        --pcr ${GUARDIAN_MANIFEST_PCR} \
        --digests-dir ${GUARDIAN_MODEL_DIGESTS_DIR} \
        --manifest ${GUARDIAN_MANIFEST_PATH} \
        --pubkey ${GUARDIAN_MANIFEST_PUBKEY_PATH} \
        --trust-config "${GUARDIAN_MANIFEST_TRUST_CONFIG}" \
        || bbfatal "guardian_manifest.bbclass: no signed model manifest for ${PN} (see the error above)"
}
