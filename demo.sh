#!/usr/bin/env bash
# Boot an arm64 board (qemu-system-aarch64 with a software TPM) running
# guardian, and watch it stop attempts to tamper with a model file while the
# legitimate updater still works. Installs what it needs first; the first
# run builds the test kernel (about 5 minutes), later runs take seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash cross/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
qemu/run-scenarios.sh --demo
