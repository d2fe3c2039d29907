SUMMARY = "guardian: integrity guard and measured boot for AI models"
DESCRIPTION = "Everything a device needs to run guardian: the agent, its \
               configuration and service units, and the TPM 2.0 tools used \
               to inspect PCRs, event logs and quotes on the device."
HOMEPAGE = "https://github.com/guardian-edge/guardian"
BUGTRACKER = "https://github.com/guardian-edge/guardian/issues"
SECTION = "security"
LICENSE = "MIT"

inherit packagegroup

# Set GUARDIAN_WITH_POLICIES = "1" (local.conf or distro) to add the signed
# example policies (guardian-policies: set GUARDIAN_POLICIES_URI and
# GUARDIAN_POLICIES_SHA256, see README.md). Off by default: a product
# usually ships its own policies.
GUARDIAN_WITH_POLICIES ??= "0"

RDEPENDS:${PN} = "\
    guardian \
    ${@oe.utils.conditional('GUARDIAN_WITH_POLICIES', '1', 'guardian-policies', '', d)} \
    tpm2-tools \
"
