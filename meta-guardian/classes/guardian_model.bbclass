# guardian_model.bbclass: for recipes that install AI model files.
#
# At the end of do_install, the model files under ${D} are hashed (SHA-256
# and size) into a digest list, ${GUARDIAN_MODEL_DIGESTS_DIR}/${PN}.json,
# packaged in ${PN} next to the models. An image that inherits
# guardian_manifest.bbclass collects the digest lists of every model recipe
# it installs, checks each model again as it lies in the rootfs, and writes
# the one signed manifest (/etc/guardian/manifest.toml) that
# `guardian measure` checks at boot. The hashing is done by
# scripts/guardian-manifest.py, which CI runs outside bitbake too.
#
# In a model recipe:
#     inherit guardian_model
#     do_install() {
#         install -D -m 0644 ${S}/classifier.onnx ${D}${GUARDIAN_MODEL_DIR}/classifier.onnx
#     }
#
# GUARDIAN_MODEL_DIR  where models live on the device; guardian.toml's sample
#                     protects /opt/models, so that is the default.
# GUARDIAN_MODELS     the model files (device paths) to list; empty means
#                     every regular file under ${GUARDIAN_MODEL_DIR} in ${D}.
#                     Symbolic links are refused: list the file they name.
# Each model's manifest entry is named after its file and gets ${PV} as its
# version.

GUARDIAN_MODEL_DIR ?= "/opt/models"
GUARDIAN_MODELS ?= ""
GUARDIAN_MODEL_DIGESTS_DIR = "${datadir}/guardian/models.d"
GUARDIAN_MANIFEST_TOOL = "${GUARDIAN_LAYERDIR}/scripts/guardian-manifest.py"

# A postfunc, not a task of its own: it runs under do_install's pseudo
# context, so the digest list gets the same ownership as the models, and
# nothing can run between the install and the hashing.
do_install[postfuncs] += "guardian_model_digests"
# A change to the hashing script reruns do_install (the digest list is part
# of its output).
do_install[file-checksums] += "${GUARDIAN_MANIFEST_TOOL}:True"
do_install[vardeps] += "GUARDIAN_MODEL_DIR GUARDIAN_MODELS"

# A postfunc of do_install, not a task: it has no [doc].
# nooelint: oelint.task.docstrings
guardian_model_digests() {
    python3 ${GUARDIAN_MANIFEST_TOOL} digests \
        --root ${D} \
        --out ${D}${GUARDIAN_MODEL_DIGESTS_DIR}/${PN}.json \
        --recipe ${PN} --version ${PV} \
        --dir ${GUARDIAN_MODEL_DIR} \
        ${GUARDIAN_MODELS}
    chmod 0644 ${D}${GUARDIAN_MODEL_DIGESTS_DIR}/${PN}.json
}

FILES:${PN} += "${GUARDIAN_MODEL_DIR} ${GUARDIAN_MODEL_DIGESTS_DIR}/${PN}.json"
