SUMMARY = "Example model for guardian's measured boot: the demo classifier"
DESCRIPTION = "The 3-class ONNX classifier of the guardian project's \
               inference example (examples/inference), installed as \
               /opt/models/classifier.onnx. It inherits guardian_model, so \
               an image that inherits guardian_manifest lists it in its \
               signed model manifest."
HOMEPAGE = "https://github.com/guardian-edge/guardian"
BUGTRACKER = "https://github.com/guardian-edge/guardian/issues"
SECTION = "examples"
# No CPE: an example file, not a product.
CVE_PRODUCT = ""
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# The same source as the agent (see guardian_0.1.0.bb): the builder names
# the revision, there is no default and no AUTOREV.
GUARDIAN_GIT_URI ?= "git://github.com/guardian-edge/guardian.git;protocol=https;branch=main"
GUARDIAN_SRCREV ?= ""
SRC_URI = "${GUARDIAN_GIT_URI}"
SRCREV = "${GUARDIAN_SRCREV}"

inherit allarch guardian_model

# Skip with a message, not a fetch error, until the revision is set.
# nooelint: oelint.task.noanonpython
python __anonymous() {
    if not d.getVar("GUARDIAN_SRCREV"):
        raise bb.parse.SkipRecipe("set GUARDIAN_SRCREV (see guardian_0.1.0.bb)")
}

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    # The repository records the model's digest next to it: refuse a
    # checkout whose model does not match it before anything hashes it.
    (cd ${S}/examples/inference/model && sha256sum --check --strict classifier.onnx.sha256)
    install -d ${D}${GUARDIAN_MODEL_DIR}
    install -m 0644 ${S}/examples/inference/model/classifier.onnx ${D}${GUARDIAN_MODEL_DIR}/classifier.onnx
}
