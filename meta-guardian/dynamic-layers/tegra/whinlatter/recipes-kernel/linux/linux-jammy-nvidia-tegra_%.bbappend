# meta-tegra's L4T R36 (JetPack 6) vendor kernel, Linux 5.15, which merges
# .cfg fragments through linux-yocto.inc: the same guardian fragments, only
# for distributions with the "guardian" feature. On 5.15 arm64 BPF LSM
# programs cannot attach (no ftrace direct calls before 6.4): guardian runs
# detect-only there (fanotify and tracepoints) and says so. Boards that use
# meta-tegra's linux-yocto kernel instead get the fragments through
# recipes-kernel/linux/linux-yocto_%.bbappend.
require ${@bb.utils.contains('DISTRO_FEATURES', 'guardian', 'recipes-kernel/linux/guardian-kernel-config.inc', '', d)}
