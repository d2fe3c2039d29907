# Add the guardian's kernel config fragments to linux-yocto.
require guardian-kernel-config.inc
