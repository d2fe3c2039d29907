#!/bin/sh
# Guest init for the overhead bench (qemu/bench/run-overhead.sh). Runs as
# PID 1 under busybox sh in the arm64 guest.
#
# Measures the inference service through its pipes (inference-bench
# --mode served: one request in flight, then pipelined) with guardian
# detached and attached (enforce: BPF LSM), alternating ABBA over ROUNDS
# rounds in this one boot, and prints every measurement as a JSON line
# for the host to summarise. Under TCG only the with/without ratio means
# anything. Kernel command line: guardian.rounds=N guardian.requests=N.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /run
mkdir -p /run/guardian /etc/guardian/policies

CONFIG=/etc/guardian/guardian.toml
arg() { sed -n "s/.*guardian\.$1=\([0-9]*\).*/\1/p" /proc/cmdline; }
ROUNDS="$(arg rounds)"
REQUESTS="$(arg requests)"
ROUNDS="${ROUNDS:-3}" REQUESTS="${REQUESTS:-2000}"

finish() {
    echo "GUARDIAN-SCENARIOS-DONE"
    poweroff -f
    sleep 10
}

agent=""
start_guard() {
    rm -f /run/guardian/status.json
    guardian run --config "$CONFIG" 2>>/run/guardian/agent.log &
    agent=$!
    n=0
    while [ ! -s /run/guardian/status.json ] && [ "$n" -lt 1200 ]; do
        kill -0 "$agent" 2>/dev/null || break
        sleep 0.1
        n=$((n + 1))
    done
    if ! grep -q '"mode": "enforce"' /run/guardian/status.json 2>/dev/null; then
        echo "OVERHEAD-ERROR guardian did not start in enforce mode"
        sed 's/^/agent: /' /run/guardian/agent.log
        finish
    fi
}
stop_guard() {
    guardian stop --unload --config "$CONFIG" >>/run/guardian/agent.log 2>&1
    wait "$agent" 2>/dev/null
    agent=""
    if [ -d /sys/fs/bpf/guardian ]; then
        echo "OVERHEAD-ERROR pins left after guardian stop --unload"
        finish
    fi
}
measure() { # measure LABEL ROUND
    if ! inference-bench --model /opt/models/classifier.onnx --mode served \
        --requests "$REQUESTS" --warmup 200 --json --label "$1" --round "$2" >/tmp/m 2>&1; then
        echo "OVERHEAD-ERROR bench failed: $(cat /tmp/m)"
        finish
    fi
    sed 's/^/OVERHEAD-RESULT /' /tmp/m
}

echo "OVERHEAD-INFO $(uname -srm), $(nproc) cpus, lsm $(cat /sys/kernel/security/lsm), rounds $ROUNDS, requests $REQUESTS"
r=1
while [ "$r" -le "$ROUNDS" ]; do
    if [ $((r % 2)) -eq 1 ]; then order="off on"; else order="on off"; fi
    for side in $order; do
        if [ "$side" = on ]; then
            start_guard
            measure on "$r"
            # The status as it was during the measurement (stop removes it).
            cp /run/guardian/status.json /run/guardian/status-last.json 2>/dev/null
            stop_guard
        else
            measure off "$r"
        fi
    done
    r=$((r + 1))
done
echo "OVERHEAD-INFO guardian's last status: $(guardian status --status-file /run/guardian/status-last.json 2>&1 | grep -E '^mode' | tr '\n' ' ')"
echo "OVERHEAD-INFO events written: $(wc -l </run/guardian/events.jsonl 2>/dev/null || echo 0)"
finish
