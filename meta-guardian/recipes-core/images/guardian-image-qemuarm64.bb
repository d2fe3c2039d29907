SUMMARY = "Example image: core-image-minimal with guardian, for qemuarm64"
DESCRIPTION = "A minimal image that boots qemuarm64 with a software TPM \
               (swtpm on the host) and runs guardian. Build it with \
               MACHINE = qemuarm64 and the guardian distro feature \
               (see meta-guardian/README.md)."
HOMEPAGE = "https://github.com/guardian-edge/guardian"
BUGTRACKER = "https://github.com/guardian-edge/guardian/issues"
SECTION = "images"
LICENSE = "MIT"

# core-image-minimal lives in openembedded-core, outside this tree, so the
# offline lint cannot open it.
# nooelint: oelint.file.requirenotfound
require recipes-core/images/core-image-minimal.bb

IMAGE_INSTALL:append = " packagegroup-guardian tpm2-tools guardian-example-model"

# The signed golden manifest of the models in the image, made at build time
# with the builder's key: set GUARDIAN_MANIFEST_SIGNING_KEY (see
# classes/guardian_manifest.bbclass and README.md).
inherit guardian_manifest
# With GUARDIAN_WITH_POLICIES = "1", packagegroup-guardian adds the example
# policies, signed by default with that same key: its public half is in
# [measure] trusted_keys, which [policy] falls back to, so they load.

COMPATIBLE_MACHINE = "qemuarm64"

# The sample configuration protects /opt/models, and guardian refuses to
# start when a protected path does not exist. Ship the (empty) directory so
# the image boots with the guard running; model recipes fill it.
ROOTFS_POSTPROCESS_COMMAND += "guardian_model_dir"
# A rootfs post-process function, not a task: it has no [doc].
# nooelint: oelint.task.docstrings
guardian_model_dir() {
    install -d -m 0755 ${IMAGE_ROOTFS}/opt/models
}
