# meta-raspberrypi's kernel (linux-raspberrypi.inc requires linux-yocto.inc,
# so its SRC_URI .cfg fragments are merged like linux-yocto's): the same
# guardian fragments, only for distributions with the "guardian" feature.
# BPF LSM enforcement needs the 6.6 or newer kernel branches (arm64 >= 6.4).
require ${@bb.utils.contains('DISTRO_FEATURES', 'guardian', 'recipes-kernel/linux/guardian-kernel-config.inc', '', d)}
