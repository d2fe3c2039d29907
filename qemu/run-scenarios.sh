#!/usr/bin/env bash
# The arm64 boot test: build (or reuse) the test kernel from the layer's
# config fragments, cross-build guardian for aarch64, pack it with the
# scenario script into an initramfs, boot it under qemu-system-aarch64 with
# a software TPM, and check one result line per scenario on the console.
#
# Usage: qemu/run-scenarios.sh [--break] [--demo]
#   --break  plant a failing scenario (guardian.break=1): the run must FAIL;
#            test.sh uses this to prove the harness catches a broken scenario
#   --demo   show only guardian's narration and the results, not the boot log
#
# Exit status: 0 when every scenario passed, non-zero otherwise.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
break_it=0 demo=0
for a in "$@"; do
    case "$a" in
        --break) break_it=1 ;;
        --demo) demo=1 ;;
        *) echo "usage: $0 [--break] [--demo]" >&2; exit 2 ;;
    esac
done
log() { printf '\033[1mscenarios:\033[0m %s\n' "$*" >&2; }

out="$root/target/qemu"
mkdir -p "$out/files"
cache="${GUARDIAN_CACHE:-$HOME/.cache/guardian}"

log "test kernel (cached by the fragments' hash)"
image="$("$here/build-kernel.sh" | tail -n 1)"

log "guardian for x86_64 (the verifier), guardian-fleet (the fleet lab) and aarch64 guardian (the agent)"
(cd "$root" && cargo build --locked -p guardian -p guardian-fleet --bin guardian --bin guardian-fleet \
    --example replay_set 2>&1 | grep -v '^warning: guardian@' >&2)
(cd "$root" && cargo build --locked --release --target aarch64-unknown-linux-gnu -p guardian 2>&1 \
    | grep -v '^warning: guardian@' >&2)
bin="$root/target/aarch64-unknown-linux-gnu/release/guardian"
log "guardian-attack (the attacks the guest runs), static aarch64"
if ! (cd "$here/attack" && cargo build --locked --release --target aarch64-unknown-linux-gnu \
    --config 'target.aarch64-unknown-linux-gnu.rustflags=["-C","target-feature=+crt-static"]') \
    >"$out/attack-build.log" 2>&1; then
    cat "$out/attack-build.log" >&2
    exit 1
fi
attack_bin="$here/attack/target/aarch64-unknown-linux-gnu/release/guardian-attack"
log "the model-writer example policy (wasm32), signed with the vendor key below"
if ! (cd "$root/policies/examples" && CARGO_TARGET_DIR="$root/target/policy-examples" \
    cargo build --locked --release --target wasm32-unknown-unknown -p model-writer) \
    >"$out/policy-build.log" 2>&1; then
    cat "$out/policy-build.log" >&2
    exit 1
fi
policy_wasm="$root/target/policy-examples/wasm32-unknown-unknown/release/model_writer.wasm"
# Cached under ~/.cache/guardian keyed by its sources and the compiler: the
# tract build takes about 5 minutes on 2 cores.
infer_key="$( (rustc -V; cd "$root/examples/inference" && cat Cargo.toml Cargo.lock \
    && find src -type f | LC_ALL=C sort | xargs cat) | sha256sum | cut -c1-16)"
infer_bin="$cache/inference/$infer_key/inference-service"
if [ -x "$infer_bin" ]; then
    log "the inference service (examples/inference), static aarch64: cached ($infer_key)"
else
    log "the inference service (examples/inference), static aarch64 (about 5 minutes, then cached)"
    if ! (cd "$root/examples/inference" && CARGO_TARGET_DIR="$root/target/inference" \
        cargo build --locked --release --target aarch64-unknown-linux-gnu --bin inference-service \
        --config 'target.aarch64-unknown-linux-gnu.rustflags=["-C","target-feature=+crt-static"]') \
        >"$out/inference-build.log" 2>&1; then
        cat "$out/inference-build.log" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$infer_bin")"
    cp "$root/target/inference/aarch64-unknown-linux-gnu/release/inference-service" "$infer_bin.tmp"
    mv "$infer_bin.tmp" "$infer_bin"
fi
# Its test inputs as request lines, and the classes they must get.
python3 - "$root/examples/inference/model/test-inputs.json" "$out/files" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
with open(sys.argv[2] + "/inputs.jsonl", "w") as req, open(sys.argv[2] + "/expected.txt", "w") as exp:
    for i in doc["inputs"]:
        req.write(json.dumps(i["features"]) + "\n")
        exp.write("%d\n" % i["class"])
PY

# A stand-in model (issue-8 brings a real one): 4 KiB of known bytes.
head -c 4096 < <(yes 'weights v1') >"$out/files/model.onnx"

# The signed manifest for that model, made the way a vendor's release
# pipeline might: openssl, Ed25519, a key that exists only for this run.
openssl genpkey -algorithm ed25519 -out "$out/files/vendor.pem" 2>/dev/null
openssl pkey -in "$out/files/vendor.pem" -pubout -out "$out/files/vendor.pub"
# The operator's key: only its tokens may switch the guest's guard off.
# (Its private half goes into the guest too, at /opt/operator, standing in
# for the operator's own machine.)
# The TPM manufacturer's CA, as the host verifier trusts it: swtpm's
# local CA (root and issuer), which signs the guest TPM's EK certificates.
localca() { sed -n "s/^$1 *= *//p" /etc/swtpm-localca.conf; }
# (swtpm_localca makes its CA on first use: on a fresh machine, manufacture
# a throwaway TPM first so that there is one to copy.)
if [ ! -f "$(localca statedir)/swtpm-localca-rootca-cert.pem" ]; then
    scratch_tpm="$(mktemp -d)"
    swtpm_setup --tpm2 --tpmstate "$scratch_tpm" --create-ek-cert --overwrite >/dev/null 2>&1 \
        || die "swtpm_setup could not create swtpm's local CA"
    rm -rf "$scratch_tpm"
fi
cp "$(localca statedir)/swtpm-localca-rootca-cert.pem" "$out/files/ek-root.pem"
cp "$(localca issuercert)" "$out/files/ek-issuer.pem"
openssl genpkey -algorithm ed25519 -out "$out/files/operator.pem" 2>/dev/null
openssl pkey -in "$out/files/operator.pem" -pubout -out "$out/files/operator.pub"
cat >"$out/files/manifest.toml" <<EOF
version = 1
pcr = 14

[[model]]
path = "/opt/models/model.onnx"
sha256 = "$(sha256sum "$out/files/model.onnx" | cut -d' ' -f1)"
size = $(stat -c %s "$out/files/model.onnx")
name = "stand-in"

[[model]]
path = "/opt/models/classifier.onnx"
sha256 = "$(sha256sum "$root/examples/inference/model/classifier.onnx" | cut -d' ' -f1)"
size = $(stat -c %s "$root/examples/inference/model/classifier.onnx")
name = "classifier"
EOF
openssl pkeyutl -sign -inkey "$out/files/vendor.pem" -rawin -in "$out/files/manifest.toml" \
    -out "$out/files/manifest.toml.sig"
# The policy the guest swaps in at run time, signed by the same vendor.
cp "$policy_wasm" "$out/files/model_writer.wasm"
"$root/target/debug/guardian" policy sign --key "$out/files/vendor.pem" "$out/files/model_writer.wasm" >&2
# The fleet's policy sets for group qemu, packed and signed by the vendor:
# version 2 is published while the fleet's boot runs; version 1 (older,
# validly signed) is then replayed onto the bucket as an attacker with
# write access to the broker would, and the guest must refuse it.
rm -rf "$out/files/set-policies"
mkdir -p "$out/files/set-policies"
cp "$out/files/model_writer.wasm" "$out/files/model_writer.wasm.sig" "$out/files/set-policies/"
for v in 1 2; do
    "$root/target/debug/guardian" policy pack --group qemu --version "$v" --key "$out/files/vendor.pem" \
        "$out/files/set-policies" -o "$out/files/qemu-v$v.set" >&2
done

scenarios=(tpm-device bpf-lsm-active control-flip-changes-predictions measure-boot pcr-equals-replay quote-evidence guardian-enforce no-syscall-tracepoint deny-append deny-append-event
    deny-truncate deny-truncate-event deny-impostor allow-updater allow-updater-event
    read-allowed status-counters quote-after-tamper
    guarded-predictions flip-denied flip-denied-event predictions-unchanged measure-gate-blocks-service
    service-preload-restart service-preload-restart-event service-exfiltration service-exfiltration-event
    preopened-fd-write preopened-fd-write-event mmap-shared-write mmap-shared-write-event
    ftruncate-fd ftruncate-fd-event truncate-path truncate-path-event chmod chmod-event
    rename-over rename-over-event rename-away rename-away-event unlink unlink-event
    hardlink hardlink-event names-unchanged
    ld-so-preload ld-so-preload-event ld-so-preload-absent ld-preload-exec ld-preload-exec-event
    exec-unlisted exec-unlisted-event library-load library-load-event
    ptrace-attach ptrace-attach-event ptrace-target connect-denied connect-denied-event connect-allowed
    self-config self-config-event self-pins self-pins-event self-pins-kept
    rename-model-dir rename-model-dir-event rename-parent-dir rename-parent-dir-event
    rmdir-model-dir rmdir-model-dir-event create-in-tree create-in-tree-event
    mkdir-in-tree mkdir-in-tree-event symlink-in-tree symlink-in-tree-event
    mount-over-dir mount-over-dir-event mount-over-parent mount-over-parent-event
    bind-over-model bind-over-model-event ns-mount-over-dir ns-mount-over-dir-event
    tree-move-over-dir tree-move-over-dir-event ms-move-over-dir ms-move-over-dir-event
    pivot-root pivot-root-event pivot-root-names-root pivot-self-allowed
    umount-under-model umount-under-model-event
    umount-lazy-under-model umount-lazy-under-model-event self-bind-allowed path-unchanged
    predictions-after-path-attacks
    prctl-exe prctl-exe-event service-traceme service-traceme-event
    traced-exec-of-service traced-exec-of-service-event ptrace-guardian ptrace-guardian-event
    preload-guardian preload-guardian-event env-overflow env-overflow-event
    bpf-map-pin bpf-map-pin-event bpf-maps-by-id bpf-maps-by-id-event
    bpf-progs-by-id bpf-progs-by-id-event
    bpf-link-detach bpf-link-detach-event bpffs-umount bpffs-umount-event
    still-enforcing still-enforcing-event guard-intact
    service-copy-egress service-copy-egress-event service-copy-recognised
    service-copy-preload service-copy-preload-event guardian-copy-powerless
    detect-move-mount detect-move-mount-in-evidence move-mount-back preexisting-writers
    enrol-request
    kill9-still-denied restart-adopts events-kept-while-down model-unchanged
    policy-before-swap policy-before-swap-event policy-swap-loaded policy-swap-allows-writer
    policy-swap-event policy-in-evidence
    reconfigure-refused unload-needs-token unload-other-boot stop-unload
    unload-token-replay-refused unload-fresh-token detect-rung-status detect-write-open detect-preopened-fd-write detect-ftruncate
    detect-connect detect-chmod detect-link fleet-link-connected)
# A fresh nonce for the guest's quote, verified on the host afterwards.
nonce="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
nonce2="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
append="guardian.nonce=$nonce guardian.nonce2=$nonce2"
if [ "$break_it" -eq 1 ]; then
    append="$append guardian.break=1"
    scenarios+=(broken-expects-tamper-to-succeed)
fi

# The fleet on the host: guardian-fleet's lab (a nats-server with JetStream
# and the fleet service) on free ports of 127.0.0.1, which the guest reaches
# through qemu's user-mode network at 10.0.2.2. Stopped (SIGTERM; it stops
# its nats-server) when this script ends.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fleet_bin="$root/target/debug/guardian-fleet"
nats_server="$cache/nats-venv/bin/nats-server"
fleet_port="$(free_port)"
fleet_url="nats://127.0.0.1:$fleet_port"
lab_pid=""
stop_lab() {
    if [ -n "$lab_pid" ] && kill -0 "$lab_pid" 2>/dev/null; then
        kill -TERM "$lab_pid" 2>/dev/null || true
        wait "$lab_pid" 2>/dev/null || true
    fi
    lab_pid=""
}
log "the fleet lab on $fleet_url (guest: nats://10.0.2.2:$fleet_port)"
rm -rf "$out/fleet-lab"
mkdir -p "$out/fleet-lab"
# The lab enrols the guest over the link (its EK certificate against the
# TPM maker's CA, pre-authorised by issuer; credential activation by its
# attestor) and then attests it every few seconds, judging its quotes
# against the vendor's key; the page and /metrics listen on the host.
page_port="$(free_port)"
"$fleet_bin" lab --dir "$out/fleet-lab" --port "$fleet_port" --mqtt-port "$(free_port)" \
    --http-port "$(free_port)" --nats-server "$nats_server" \
    --listen "127.0.0.1:$page_port" --attest-every 3s --answer-timeout 20s \
    --manifest-key "$out/files/vendor.pub" \
    --ek-ca "$out/files/ek-root.pem" --ek-ca "$out/files/ek-issuer.pem" \
    --enrol-issuer "CN=swtpm-localca" >"$out/fleet-lab.log" 2>&1 &
lab_pid=$!
for _ in $(seq 100); do
    "$fleet_bin" --nats "$fleet_url" status --json >/dev/null 2>&1 && break
    kill -0 "$lab_pid" 2>/dev/null || break
    sleep 0.2
done
"$fleet_bin" --nats "$fleet_url" status --json >/dev/null 2>&1 \
    || { log "the fleet lab did not start (see $out/fleet-lab.log)"; tail -n 5 "$out/fleet-lab.log" >&2; }
append="$append guardian.fleet=10.0.2.2:$fleet_port"

log "initramfs"
"$here/build-initramfs.sh" "$out/initrd.cpio.gz" "$here/scenarios/init.sh" \
    "@agent:$bin" \
    "@config:$here/scenarios/guardian.toml" \
    "$out/files/model.onnx:/opt/models/model.onnx" \
    "$out/files/manifest.toml:/etc/guardian/manifest.toml" \
    "$out/files/manifest.toml.sig:/etc/guardian/manifest.toml.sig" \
    "$out/files/vendor.pub:/etc/guardian/vendor.pub" \
    "$out/files/operator.pub:/etc/guardian/operator.pub" \
    "$out/files/operator.pem:/opt/operator/operator.pem" \
    "$cache/busybox-arm64/bin/busybox:/opt/updater/busybox" \
    "$attack_bin:/usr/bin/guardian-attack" \
    "$attack_bin:/usr/sbin/model-updater" \
    "$infer_bin:/usr/bin/inference-service" \
    "$root/examples/inference/model/classifier.onnx:/opt/models/classifier.onnx" \
    "$out/files/inputs.jsonl:/opt/inference/inputs.jsonl" \
    "$out/files/expected.txt:/opt/inference/expected.txt" \
    "$out/files/model_writer.wasm:/opt/policies/model_writer.wasm" \
    "$out/files/model_writer.wasm.sig:/opt/policies/model_writer.wasm.sig" \
    "$here/scenarios/detect.toml:/etc/guardian/detect.toml"

# One TPM for both boots (the scenarios, then the enrolment answer): its
# state is kept between them, as a board's TPM is across a power cycle.
tpm_state="$(mktemp -d /tmp/guardian-tpm.XXXXXX)"
trap 'stop_lab; rm -rf "$tpm_state"' EXIT
export GUARDIAN_TPM_STATE="$tpm_state"
# While the guest runs, watch the guest's trust state on the fleet as an
# operator's screen would: each change is kept, with the page as it was.
: >"$out/fleet-trust-history.txt"
rm -f "$out"/fleet-page-*.html
(
    last="" n=0
    while kill -0 "$lab_pid" 2>/dev/null; do
        now="$("$fleet_bin" --nats "$fleet_url" device qemu-arm64 --since 1m --json 2>/dev/null \
            | python3 -c 'import json,sys; a=(json.load(sys.stdin).get("attestation") or {}); print(a.get("trust","not-attested"))' 2>/dev/null)" || now=""
        if [ -n "$now" ] && [ "$now" != "$last" ]; then
            n=$((n + 1))
            echo "$(date +%T) $now" >>"$out/fleet-trust-history.txt"
            curl -s "http://127.0.0.1:$page_port/device/qemu-arm64" >"$out/fleet-page-$n-$now.html" 2>/dev/null || true
            last="$now"
        fi
        sleep 2
    done
) &
# When the guest says it is ready, publish its group's set 2; when it asks
# for the older set, replay set 1 onto the bucket. (The console of an
# earlier run holds the same markers: it goes first.)
rm -f "$out/console-fleet.log"
(
    n=0
    until grep -q '^GUARDIAN-PUSH-READY' "$out/console-fleet.log" 2>/dev/null; do
        [ "$n" -ge 1200 ] && exit 0
        sleep 0.5
        n=$((n + 1))
    done
    "$fleet_bin" --nats "$fleet_url" policy publish --group qemu --policy-key "$out/files/vendor.pub" \
        "$out/files/qemu-v2.set" >"$out/fleet-policy.txt" 2>&1
    until grep -q '^GUARDIAN-PUSH-OLDER' "$out/console-fleet.log" 2>/dev/null; do
        [ "$n" -ge 1200 ] && exit 0
        sleep 0.5
        n=$((n + 1))
    done
    "$root/target/debug/examples/replay_set" "$fleet_url" qemu "$out/files/qemu-v1.set" >>"$out/fleet-policy.txt" 2>&1
) &
# The fleet's boot first: the guest enrols with the fleet over its link,
# is attested, and suffers one tamper attempt (denied); then the scenarios.
log "the fleet's boot: the guest enrols with the fleet and is attested over the link"
fleet_console="$out/console-fleet.log"
rm -f "$fleet_console"
if [ "$demo" -eq 1 ]; then
    GUARDIAN_KERNEL_APPEND="quiet $append guardian.phase=fleet" "$here/boot.sh" "$image" "$out/initrd.cpio.gz" \
        "$fleet_console" 420 >/dev/null 2>"$out/boot-fleet.stderr" &
    boot_pid=$!
    tail -n +1 -F --pid="$boot_pid" "$fleet_console" 2>/dev/null | tr -d '\r' \
        | grep --line-buffered -E '^demo:' | sed -u 's/^demo: //' || true
    wait "$boot_pid" || true
else
    GUARDIAN_KERNEL_APPEND="$append guardian.phase=fleet" "$here/boot.sh" "$image" "$out/initrd.cpio.gz" \
        "$fleet_console" 420 >/dev/null 2>&1 || true
fi
# What the fleet saw of the pushed set, before the next boot (which
# follows no group) reports as the same device: set 2 published, in force
# on the guest as its verified quotes show, the older set never.
pushed_results="$out/fleet-policy-results.log"
if grep -q '^published group qemu version 2 ' "$out/fleet-policy.txt" 2>/dev/null; then r=PASS; else r=FAIL; fi
echo "GUARDIAN-SCENARIO fleet-policy-published $r $(head -n 1 "$out/fleet-policy.txt" 2>/dev/null | cut -c1-160)" >"$pushed_results"
"$fleet_bin" --nats "$fleet_url" status --json >"$out/fleet-status-after-push.json" 2>/dev/null || true
if got="$(python3 -c '
import json, sys
for d in json.load(open(sys.argv[1])):
    if d.get("device") == "qemu-arm64":
        p = d.get("policy_set") or {}
        print(json.dumps(p))
        sys.exit(0 if p.get("state") == "current" and p.get("version") == 2 else 1)
print("qemu-arm64 not in status")
sys.exit(1)' "$out/fleet-status-after-push.json")"; then r=PASS; else r=FAIL; fi
echo "GUARDIAN-SCENARIO fleet-policy-current-on-fleet $r $got" >>"$pushed_results"
scenarios+=(fleet-policy-published fleet-policy-current-on-fleet)
log "booting the arm64 guest (TCG; functional timing only)"
console="$out/console.log"
boot_status=0
rm -f "$console"
if [ "$demo" -eq 1 ]; then
    # Follow the console, showing only the narration and the results.
    GUARDIAN_KERNEL_APPEND="quiet $append" "$here/boot.sh" "$image" "$out/initrd.cpio.gz" "$console" 300 \
        >/dev/null 2>"$out/boot.stderr" &
    boot_pid=$!
    tail -n +1 -F --pid="$boot_pid" "$console" 2>/dev/null | tr -d '\r' \
        | grep --line-buffered -E '^demo:' | sed -u 's/^demo: //' || true
    wait "$boot_pid" || boot_status=$?
else
    GUARDIAN_KERNEL_APPEND="$append" "$here/boot.sh" "$image" "$out/initrd.cpio.gz" "$console" 300 || boot_status=$?
fi
# The host verifies the guest's evidence with the x86_64 guardian and the
# AK public key the guest enrolled, against the golden manifest it built.
results="$out/results.log"
tr -d '\r' <"$console" >"$results"
tr -d '\r' <"$fleet_console" | grep '^GUARDIAN-SCENARIO fleet-' >>"$results" || true
cat "$pushed_results" >>"$results"
scenarios+=(fleet-boot-measure fleet-enrolled-and-quoted fleet-tamper-denied fleet-quoted-after-tamper
    fleet-policy-before-push fleet-policy-before-push-event fleet-policy-set-applied fleet-policy-set-in-evidence
    fleet-policy-set-takes-effect fleet-policy-older-refused fleet-quoted-after-push)
sed -n '/^GUARDIAN-EVIDENCE-BEGIN$/,/^GUARDIAN-EVIDENCE-END$/p' "$results" | sed '1d;$d' >"$out/evidence.json"
sed -n '/^GUARDIAN-AK-BEGIN$/,/^GUARDIAN-AK-END$/p' "$results" | sed '1d;$d' >"$out/ak.pem"
sed -n '/^GUARDIAN-ENROL-REQUEST-BEGIN$/,/^GUARDIAN-ENROL-REQUEST-END$/p' "$results" | sed '1d;$d' >"$out/request.json"
# What the guest reported is in the fleet's store: a denied tamper attempt
# on a protected model (the guest's first, the bit flip) as an alert, and
# the agent's status summaries.
fleet_records() {
    "$fleet_bin" --nats "$fleet_url" events --device qemu-arm64 --since 1h --json 2>>"$out/fleet-query.log"
}
fleet_check() {
    # fleet_check CLASS: the first stored record of CLASS that fits, or fail.
    python3 -c '
import json, sys
want = sys.argv[1]
for line in sys.stdin:
    try:
        r = json.loads(line)
    except ValueError:
        continue
    b = r.get("body") or {}
    if r.get("class") != want:
        continue
    if want == "alert" and not (b.get("verdict") == "deny"
            and str(b.get("file", "")).startswith("/opt/models/")):
        continue
    if want == "status" and not isinstance(b.get("hooks"), list):
        continue
    keys = ("event", "hook", "verdict", "file", "comm") if want == "alert" else ("mode",)
    print("seq %s: %s" % (r.get("seq"), " ".join("%s=%s" % (k, b.get(k)) for k in keys)))
    sys.exit(0)
sys.exit(1)' "$1"
}
: >"$out/fleet-query.log"
for _ in $(seq 60); do
    fleet_records >"$out/fleet-records.jsonl" || true
    fleet_check alert <"$out/fleet-records.jsonl" >/dev/null && fleet_check status <"$out/fleet-records.jsonl" >/dev/null && break
    sleep 0.5
done
n_stored="$(wc -l <"$out/fleet-records.jsonl")"
if got="$(fleet_check alert <"$out/fleet-records.jsonl")"; then r=PASS; else r=FAIL got="none of $n_stored stored record(s) $(tail -n 1 "$out/fleet-query.log")"; fi
echo "GUARDIAN-SCENARIO fleet-stored-tamper-alert $r $got" >>"$results"
if got="$(fleet_check status <"$out/fleet-records.jsonl")"; then r=PASS; else r=FAIL got="none of $n_stored stored record(s)"; fi
echo "GUARDIAN-SCENARIO fleet-stored-status $r $got ($n_stored records from qemu-arm64)" >>"$results"
scenarios+=(fleet-stored-tamper-alert fleet-stored-status)
# The fleet enrolled the guest over the link, attested it trusted at least
# once, and saw its tamper attempts in the evidence; the operator's page
# shows the guest and its alerts.
"$fleet_bin" --nats "$fleet_url" enrol list >"$out/fleet-enrolled.txt" 2>&1 || true
if grep -q '^qemu-arm64 .*EK issuer CN=swtpm-localca' "$out/fleet-enrolled.txt"; then r=PASS; else r=FAIL; fi
echo "GUARDIAN-SCENARIO fleet-enrolled-guest $r $(head -n 1 "$out/fleet-enrolled.txt")" >>"$results"
curl -s "http://127.0.0.1:$page_port/metrics" >"$out/fleet-metrics.txt" 2>/dev/null || true
trusted="$(sed -n 's/^guardian_fleet_verifications_trusted_total \([0-9]*\)$/\1/p' "$out/fleet-metrics.txt")"
if [ "${trusted:-0}" -ge 1 ]; then r=PASS; else r=FAIL; fi
echo "GUARDIAN-SCENARIO fleet-attested-guest-trusted $r ${trusted:-0} trusted verdict(s) over the link; $(grep -E '^guardian_fleet_(verification_failures|unreachable)_total' "$out/fleet-metrics.txt" | tr '\n' ' ')" >>"$results"
"$fleet_bin" --nats "$fleet_url" device qemu-arm64 --since 1h --json >"$out/fleet-device.json" 2>/dev/null || true
if got="$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
a = d.get("attestation") or {}
v = a.get("verdict") or {}
kinds = sorted({x.get("kind") for x in d.get("alerts", [])})
if a.get("rounds", {}).get("verified", 0) >= 1 and v.get("tamper_attempts") and "tamper_attempt" in kinds:
    print("now %s after %d verdict(s); %d tamper attempt(s) in the last verdict; alerts: %s"
          % (a.get("trust"), a["rounds"]["verified"], len(v["tamper_attempts"]), " ".join(kinds)))
    sys.exit(0)
print("rounds %s, tamper attempts %s, alerts %s" % (a.get("rounds"), len(v.get("tamper_attempts") or []), kinds))
sys.exit(1)' "$out/fleet-device.json")"; then r=PASS; else r=FAIL; fi
echo "GUARDIAN-SCENARIO fleet-attestation-sees-tamper $r $got" >>"$results"
curl -s "http://127.0.0.1:$page_port/device/qemu-arm64" >"$out/fleet-page-device.html" 2>/dev/null || true
if grep -q 'qemu-arm64' "$out/fleet-page-device.html" && grep -q 'tamper_attempt' "$out/fleet-page-device.html"; then r=PASS; else r=FAIL; fi
echo "GUARDIAN-SCENARIO fleet-page-shows-guest $r $(wc -c <"$out/fleet-page-device.html") bytes; the page is $out/fleet-page-device.html" >>"$results"
if command -v chromium >/dev/null; then
    chromium --headless --no-sandbox --disable-gpu --window-size=1280,900 \
        --screenshot="$out/fleet-page.png" "http://127.0.0.1:$page_port/device/qemu-arm64" >/dev/null 2>&1 || true
    log "the operator's page for the guest: $out/fleet-page.png"
fi
if grep -q ' trusted$' "$out/fleet-trust-history.txt"; then r=PASS; else r=FAIL; fi
echo "GUARDIAN-SCENARIO fleet-page-followed-guest $r $(awk '{print $2}' "$out/fleet-trust-history.txt" | paste -sd' ' | sed 's/ / -> /g')" >>"$results"
{
    echo "fleet: the fleet service on this host enrolled the board over its link (its EK certificate"
    echo "fleet: checked against the TPM maker's CA, a credential only its TPM could open) and asked it"
    echo "fleet: for a fresh quote every 3 s. What the operator's page showed, as it changed:"
    sed 's/^/fleet:   /' "$out/fleet-trust-history.txt"
    "$fleet_bin" --nats "$fleet_url" device qemu-arm64 --since 1h 2>/dev/null | sed -n '1,/^$/p' | sed 's/^/fleet:   /'
    echo "fleet: its alerts (JSON on guardian.alert.qemu-arm64, and any webhook):"
    "$fleet_bin" --nats "$fleet_url" alerts --device qemu-arm64 --since 1h 2>/dev/null \
        | awk '{ $1=""; print }' | sort | uniq -c | sort -rn | head -n 8 | sed 's/^/fleet:   /'
    echo "fleet: the page as it was at each change: $out/fleet-page-*.html"
} >&2 || true  # (narration only: a closed pipe in it must not end the run)
scenarios+=(fleet-enrolled-guest fleet-attested-guest-trusted fleet-attestation-sees-tamper fleet-page-shows-guest fleet-page-followed-guest)
stop_lab
# Enrolment with the host as the verifier: step 2 here (the arm64 TPM's EK
# certificate chain against the TPM maker's CA, the AK's attributes, a
# credential only that TPM can open), step 3 in a second boot of the guest
# with the same TPM, step 4 here; the record then verifies both quotes.
rm -f "$out/device.json"
if "$root/target/debug/guardian" enrol challenge --request "$out/request.json" \
    --ca "$out/files/ek-root.pem" --ca "$out/files/ek-issuer.pem" \
    -o "$out/challenge.json" --pending "$out/pending.json" 2>"$out/enrol-host.log"; then r=PASS; else r=FAIL; fi
echo "GUARDIAN-SCENARIO host-enrol-challenge $r $(tail -n 1 "$out/enrol-host.log")" >>"$results"
scenarios+=(host-enrol-challenge)
if [ "$r" = PASS ]; then
    log "second boot: the guest answers the enrolment challenge"
    GUARDIAN_KERNEL_APPEND="guardian.phase=activate guardian.challenge=$(base64 -w0 "$out/challenge.json")" \
        "$here/boot.sh" "$image" "$out/initrd.cpio.gz" "$out/console-enrol.log" 120 >/dev/null 2>&1 || true
    tr -d '\r' <"$out/console-enrol.log" | grep '^GUARDIAN-SCENARIO enrol-activate' >>"$results"
    tr -d '\r' <"$out/console-enrol.log" \
        | sed -n '/^GUARDIAN-ENROL-RESPONSE-BEGIN$/,/^GUARDIAN-ENROL-RESPONSE-END$/p' | sed '1d;$d' >"$out/response.json"
    if "$root/target/debug/guardian" enrol finish --request "$out/request.json" --pending "$out/pending.json" \
        --response "$out/response.json" -o "$out/device.json" 2>>"$out/enrol-host.log"; then r=PASS; else r=FAIL; fi
fi
echo "GUARDIAN-SCENARIO host-enrols-guest $r $(tail -n 1 "$out/enrol-host.log")" >>"$results"
scenarios+=(enrol-activate host-enrols-guest)
# The verifier keeps a state for the guest (TPM counters, findings) across
# both quotes, as a fleet verifier would.
rm -f "$out/verifier-state.json"
verdict="$("$root/target/debug/guardian" verify --evidence "$out/evidence.json" --device "$out/device.json" \
    --key "$out/files/vendor.pub" --manifest "$out/files/manifest.toml" --nonce "$nonce" \
    --state "$out/verifier-state.json" 2>&1)" && r=PASS || r=FAIL
echo "$verdict" | sed 's/^/verifier: /' >&2
echo "GUARDIAN-SCENARIO host-verifies-guest-evidence $r $(echo "$verdict" | head -n 1)" >>"$results"
scenarios+=(host-verifies-guest-evidence)
# The second quote, after the attacks: the verifier must see the tamper
# records, and must name the model the updater changed (the golden manifest
# still has the old digest), while the log still explains the PCR.
sed -n '/^GUARDIAN-EVIDENCE2-BEGIN$/,/^GUARDIAN-EVIDENCE2-END$/p' "$results" | sed '1d;$d' >"$out/evidence2.json"
verdict2="$("$root/target/debug/guardian" verify --evidence "$out/evidence2.json" --device "$out/device.json" \
    --key "$out/files/vendor.pub" --manifest "$out/files/manifest.toml" --nonce "$nonce2" \
    --state "$out/verifier-state.json" 2>&1)" || true
echo "$verdict2" | sed 's/^/verifier: /' >&2
if echo "$verdict2" | grep -qE '^  TAMPER record [0-9]+: tamper attempt denied' \
    && echo "$verdict2" | grep -q 'FAIL  model: /opt/models/model.onnx' \
    && echo "$verdict2" | grep -q 'ok    log_replay' \
    && echo "$verdict2" | grep -q 'ok    signature'; then r=PASS; else r=FAIL; fi
echo "GUARDIAN-SCENARIO host-sees-tamper-records $r $(echo "$verdict2" | grep -c TAMPER) tamper record(s), model change named" >>"$results"
scenarios+=(host-sees-tamper-records)
check_status=0
"$here/check-scenarios.sh" "$results" "${scenarios[@]}" || check_status=$?
if [ "$boot_status" -ne 0 ]; then
    log "boot failed with status $boot_status (see $console)"
fi
[ "$boot_status" -eq 0 ] && [ "$check_status" -eq 0 ]
