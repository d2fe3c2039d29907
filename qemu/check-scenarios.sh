#!/usr/bin/env bash
# Check a guest console log against the scenario protocol.
#
# Usage: qemu/check-scenarios.sh CONSOLE_LOG NAME...
#
# The guest prints one line per scenario:
#     GUARDIAN-SCENARIO <name> PASS <free text>
#     GUARDIAN-SCENARIO <name> FAIL <free text>
# and finally the line GUARDIAN-SCENARIOS-DONE.
#
# Prints a table and a closing "scenarios: N passed, N failed" line (log-level
# problems such as a missing DONE line count as failures there). Fails
# (exit 1) when an expected NAME is missing, any scenario FAILed (expected or
# not), a scenario line is malformed, the DONE line is missing, or the kernel
# panicked or oopsed. Exit 2 on usage errors.
set -euo pipefail

die() { printf 'check-scenarios: error: %s\n' "$*" >&2; exit 2; }

[ $# -ge 1 ] || die "usage: $0 CONSOLE_LOG NAME..."
console_log="$1"
shift
[ -f "$console_log" ] || die "no such log: $console_log"

# Serial consoles end lines in \r\n, and kernel messages can land in front of
# a guest line on the same console line: strip \r and anything before the
# marker.
lines="$(tr -d '\r' <"$console_log")"

declare -A result=() detail=()
order=()
problems=()
while IFS= read -r line; do
    line="GUARDIAN-SCENARIO ${line#*GUARDIAN-SCENARIO }"
    if [[ "$line" =~ ^GUARDIAN-SCENARIO\ ([^[:space:]]+)\ (PASS|FAIL)(\ (.*))?$ ]]; then
        name="${BASH_REMATCH[1]}" verdict="${BASH_REMATCH[2]}" text="${BASH_REMATCH[4]}"
        if [ -z "${result[$name]+x}" ]; then
            order+=("$name")
            result[$name]="$verdict"
            detail[$name]="$text"
        elif [ "$verdict" = FAIL ] || [ "${result[$name]}" = FAIL ]; then
            # Reported twice: any FAIL wins, and the text says so.
            result[$name]=FAIL
            detail[$name]="(reported more than once) ${detail[$name]} | $text"
        fi
    else
        problems+=("malformed scenario line: $line")
    fi
done < <(grep -E 'GUARDIAN-SCENARIO ' <<<"$lines" || true)

for name in "$@"; do
    if [ -z "${result[$name]+x}" ]; then
        order+=("$name")
        result[$name]=MISSING
        detail[$name]="no GUARDIAN-SCENARIO line in the log"
    fi
done

if ! grep -qE 'GUARDIAN-SCENARIOS-DONE$' <<<"$lines"; then
    problems+=("no GUARDIAN-SCENARIOS-DONE line: the guest did not finish")
fi
if grep -qE 'Kernel panic - not syncing|end Kernel panic' <<<"$lines"; then
    problems+=("kernel panic: $(grep -m1 -E 'Kernel panic - not syncing' <<<"$lines" || echo 'see log')")
fi
if grep -qE 'Internal error: Oops|BUG: kernel NULL pointer|Unable to handle kernel' <<<"$lines"; then
    problems+=("kernel oops: $(grep -m1 -E 'Internal error: Oops|BUG: kernel NULL pointer|Unable to handle kernel' <<<"$lines")")
fi
if [ "${#order[@]}" -eq 0 ]; then
    problems+=("no scenario was reported and none was expected")
fi

passed=0 failed=0
width=8
for name in "${order[@]}"; do
    [ "${#name}" -le "$width" ] || width="${#name}"
done
printf '%-*s  %-7s  %s\n' "$width" SCENARIO RESULT DETAIL
printf '%-*s  %-7s  %s\n' "$width" "$(printf '%*s' "$width" '' | tr ' ' -)" ------- ------
for name in "${order[@]}"; do
    printf '%-*s  %-7s  %s\n' "$width" "$name" "${result[$name]}" "${detail[$name]}"
    if [ "${result[$name]}" = PASS ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
done
for p in "${problems[@]+"${problems[@]}"}"; do
    printf 'problem: %s\n' "$p"
    # Counted as failures so that the closing line never reads "0 failed"
    # for a run that fails.
    failed=$((failed + 1))
done
printf 'scenarios: %d passed, %d failed\n' "$passed" "$failed"

[ "$failed" -eq 0 ]
