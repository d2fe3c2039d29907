# Add the guardian's kernel config fragments to linux-yocto, only for
# distributions that opt in with DISTRO_FEATURES:append = " guardian": a layer
# must not change other recipes just by being in BBLAYERS (Yocto Project
# Compatible rule).
require ${@bb.utils.contains('DISTRO_FEATURES', 'guardian', 'guardian-kernel-config.inc', '', d)}
