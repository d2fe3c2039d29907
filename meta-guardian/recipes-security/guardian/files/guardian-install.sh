#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Installs what guardian-install.list lists, or says where one entry goes.
#
#   guardian-install.sh install LIST DESTDIR [--var NAME=VALUE]...
#       [--source KIND=DIR]... [--feature FEATURE]...
#   guardian-install.sh resolve LIST ID [--var NAME=VALUE]...
#       prints "MODE DEST" of entry ID
#
# ${NAME} in a destination takes --var NAME=VALUE, else the list's
# "default NAME VALUE"; an unknown name is an error. KIND is build, src or
# files (see the list). Units (*.service) get /usr/bin/ and /etc/guardian/
# rewritten to ${bindir}/ and ${sysconfdir}/guardian/, so they name the
# installed agent and config wherever those go.
set -eu

die() { echo "guardian-install.sh: $*" >&2; exit 1; }
[ $# -ge 3 ] || die "usage: install LIST DESTDIR [options] | resolve LIST ID [options]"
mode="$1" list="$2" arg="$3"
shift 3
[ -f "$list" ] || die "no install list $list"
vars="" sources="" features=""
while [ $# -gt 0 ]; do
    case "$1" in
        --var) vars="$vars
$2"; shift 2 ;;
        --source) sources="$sources
$2"; shift 2 ;;
        --feature) features="$features $2 "; shift 2 ;;
        *) die "unknown option $1" ;;
    esac
done

value() { # NAME -> value from --var, then the list's default
    v="$(printf '%s\n' "$vars" | sed -n "s|^$1=||p" | tail -n 1)"
    [ -n "$v" ] || v="$(awk -v n="$1" '$1 == "default" && $2 == n { print $3 }' "$list" | tail -n 1)"
    [ -n "$v" ] || die "$list: no value for \${$1} (give --var $1=VALUE)"
    printf '%s\n' "$v"
}

expand() { # string with ${NAME}s
    s="$1"
    while :; do
        # shellcheck disable=SC2016 # a literal ${ in the destination
        case "$s" in
            *'${'*'}'*)
                name="${s#*\$\{}"; name="${name%%\}*}"
                s="$(printf '%s' "$s" | sed "s|\${$name}|$(value "$name")|g")" ;;
            *) break ;;
        esac
    done
    printf '%s\n' "$s"
}

entries() { grep -Ev '^[[:space:]]*(#|$|default[[:space:]])' "$list"; }

if [ "$mode" = resolve ]; then
    line="$(entries | awk -v id="$arg" '$1 == id')"
    [ -n "$line" ] || die "$list has no entry $arg"
    # shellcheck disable=SC2086 # split the entry into its fields
    set -- $line
    printf '%s %s\n' "$2" "$(expand "$4")"
    exit 0
fi
[ "$mode" = install ] || die "unknown mode $mode"
destdir="$arg"
bindir="$(value bindir)" sysconfdir="$(value sysconfdir)"
entries | while read -r id perm source dest feature; do
    [ -n "$dest" ] || die "$list: entry $id: expected ID MODE SOURCE DEST [FEATURE]"
    if [ -n "$feature" ]; then
        case "$features" in *" $feature "*) ;; *) continue ;; esac
    fi
    kind="${source%%:*}" path="${source#*:}"
    dir="$(printf '%s\n' "$sources" | sed -n "s|^$kind=||p" | tail -n 1)"
    [ -n "$dir" ] || die "entry $id: no --source $kind=DIR"
    [ -f "$dir/$path" ] || die "entry $id: $dir/$path does not exist"
    to="$destdir$(expand "$dest")"
    install -d "$(dirname "$to")"
    case "$to" in
        *.service)
            sed -e "s,/usr/bin/,$bindir/,g" -e "s,/etc/guardian/,$sysconfdir/guardian/,g" \
                "$dir/$path" >"$to"
            chmod "$perm" "$to" ;;
        *) install -m "$perm" "$dir/$path" "$to" ;;
    esac
done
