SUMMARY = "guardian: integrity guard and measured boot for AI models"
DESCRIPTION = "Everything a device needs to run guardian: the agent, its \
               configuration and service units, and the TPM 2.0 tools used \
               to inspect PCRs, event logs and quotes on the device."
HOMEPAGE = "https://github.com/guardian-edge/guardian"
BUGTRACKER = "https://github.com/guardian-edge/guardian/issues"
SECTION = "security"
LICENSE = "MIT"

inherit packagegroup

RDEPENDS:${PN} = "\
    guardian \
    tpm2-tools \
"
