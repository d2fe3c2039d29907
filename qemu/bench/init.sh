#!/bin/sh
# Guest init for the overhead bench (qemu/bench/run-overhead.sh). Runs as
# PID 1 under busybox sh in the arm64 guest.
#
# Measures the inference service through its pipes (inference-bench
# --mode served: one request in flight, then pipelined) with guardian
# detached and attached (enforce: BPF LSM), alternating ABBA over ROUNDS
# rounds in this one boot, and prints every measurement as a JSON line
# for the host to summarise. Under TCG only the with/without ratio means
# anything. Kernel command line: guardian.rounds=N guardian.requests=N
# guardian.idle=SECONDS (how long the agent idles before its memory is
# read, default 30; guardian.rounds=0 reads only that).

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
start_guard() { # start_guard [CONFIG]
    rm -f /run/guardian/status.json
    guardian run --config "${1:-$CONFIG}" 2>>/run/guardian/agent.log &
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
stop_guard() { # stop_guard [CONFIG]
    guardian stop --unload --config "${1:-$CONFIG}" >>/run/guardian/agent.log 2>&1
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

# Opens of an unprotected file: by a program that is neither the service
# nor anything guardian knows (guardian-attack with one more byte: another
# inode, another digest), and by the service (guardian-attack is one of its
# executables in this config), which measure at use judges by name.
echo plain >/tmp/plain
cp /usr/bin/guardian-attack /tmp/opener && printf 'x' >>/tmp/opener
opens() { # opens LABEL ROUND
    o="$(/tmp/opener open-loop /tmp/plain 20000 | awk '{ print $3 }')"
    s="$(guardian-attack open-loop /tmp/plain 20000 | awk '{ print $3 }')"
    echo "OVERHEAD-OPENS $1 $2 ${o:-0} ${s:-0}"
}

echo "OVERHEAD-INFO $(uname -srm), $(nproc) cpus, lsm $(cat /sys/kernel/security/lsm), rounds $ROUNDS, requests $REQUESTS"
# The agent's idle memory, before any measurement: under TCG memory
# figures are valid where timings are not (docs/footprint.md). The ring
# buffer is counted apart: its pages are mapped twice.
IDLE="$(arg idle)"
start_guard
sleep "${IDLE:-30}"
echo "OVERHEAD-RSS after ${IDLE:-30} s idle: $(grep -E '^(VmRSS|RssAnon|RssFile|RssShmem|VmHWM)' /proc/"$agent"/status | tr -s ' \t' ' ' | tr '\n' ' ')"
echo "OVERHEAD-RSS ring buffer: $(awk '/^[0-9a-f]+-[0-9a-f]+ / { m = ($6 ~ /^anon_inode:bpf-map/) } m && /^Rss:/ { s += $2 } END { print s + 0 }' /proc/"$agent"/smaps) kB"
stop_guard
r=1
while [ "$r" -le "$ROUNDS" ]; do
    if [ $((r % 2)) -eq 1 ]; then order="off on nomeasure"; else order="nomeasure on off"; fi
    for side in $order; do
        if [ "$side" = nomeasure ]; then
            start_guard /etc/guardian/nomeasure.toml
            opens nomeasure "$r"
            stop_guard /etc/guardian/nomeasure.toml
        elif [ "$side" = on ]; then
            start_guard
            opens on "$r"
            measure on "$r"
            # The status as it was during the measurement (stop removes it).
            cp /run/guardian/status.json /run/guardian/status-last.json 2>/dev/null
            stop_guard
        else
            opens off "$r"
            measure off "$r"
        fi
    done
    r=$((r + 1))
done
echo "OVERHEAD-INFO guardian's last status: $(guardian status --status-file /run/guardian/status-last.json 2>&1 | grep -E '^mode' | tr '\n' ' ')"
echo "OVERHEAD-INFO events written: $(wc -l </run/guardian/events.jsonl 2>/dev/null || echo 0)"
finish
