# meta-tegra's L4T R39 (JetPack 7) vendor kernel, Linux 6.8, which merges
# .cfg fragments through linux-yocto.inc: the same guardian fragments, only
# for distributions with the "guardian" feature. Boards that use meta-tegra's
# linux-yocto kernel instead get the fragments through
# recipes-kernel/linux/linux-yocto_%.bbappend.
require ${@bb.utils.contains('DISTRO_FEATURES', 'guardian', 'recipes-kernel/linux/guardian-kernel-config.inc', '', d)}
