#!/bin/sh
# Rendered by opsfab from hosts.toml; do not edit on the host.
# Scheduled backups of the prod deployments, run by cron (backups/scripts/opsfab.cron):
#   backup.sh daily    0 3 * * *, keeps the newest 7 sets per deployment
#   backup.sh weekly   0 4 * * 0, keeps the newest 4 sets per deployment
# Sets are laid out as `fab backup` makes them: backups/<kind>/<deployment>-<UTC stamp>.
# <item>.<suffix>, files mode 600 in a mode 700 folder. Each dump is written to a
# .partial- file and kept only once it reads back; a deployment's set is kept only
# when every item of it passed. Exits non-zero when anything failed.
set -u
umask 077
kind=${1:-}
case "$kind" in
    daily) keep=7 ;;
    weekly) keep=4 ;;
    *) echo "usage: $0 daily|weekly" >&2; exit 2 ;;
esac
folder=/opt/ops/backups/$kind
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$folder" && chmod 700 "$folder" || exit 1
failed=0
say() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) backup $kind: $*"; }

volume() {  # SET VOLUME IMAGE: the volume as tar.gz, read by a throwaway container
    docker run --rm --pull never --network none --user 0:0 --entrypoint tar -v "$2:/data:ro" "$3" \
        -czf - -C /data . > "$folder/.partial-$1.volume-$2.tar.gz" &&
    gzip -t "$folder/.partial-$1.volume-$2.tar.gz" &&
    [ "$(tar -tzf "$folder/.partial-$1.volume-$2.tar.gz" | wc -l)" -gt 0 ]
}

postgres() {  # SET SERVICE CONTAINER USER DATABASE: pg_dump, complete or refused
    partial="$folder/.partial-$1.postgres-$2.sql.gz"
    docker exec "$3" pg_dump -U "$4" -d "$5" --clean --if-exists --no-owner > "${partial%.gz}" &&
    tail -n 5 "${partial%.gz}" | grep -q "PostgreSQL database dump complete" &&
    gzip -n -f "${partial%.gz}"
}

sqlite() {  # SET SERVICE CONTAINER PATH: SQLite's own .backup, integrity-checked
    inside="/tmp/opsfab-$1.db"
    docker exec "$3" sqlite3 "$4" ".backup '$inside'" &&
    [ "$(docker exec "$3" sqlite3 "$inside" "PRAGMA integrity_check")" = ok ] &&
    docker exec "$3" cat "$inside" > "$folder/.partial-$1.sqlite-$2.db" &&
    docker exec "$3" rm -f "$inside" &&
    gzip -n -f "$folder/.partial-$1.sqlite-$2.db"
}

keep_set() {  # SET: move the verified partial files into place
    for partial in "$folder"/.partial-"$1".*; do
        [ -e "$partial" ] && mv -f "$partial" "$folder/${partial##*/.partial-}"
    done
}

prune() {  # DEPLOYMENT: remove its sets beyond the newest $keep
    ls -1A "$folder" | sed -n "s/^\($1-[0-9]\{8\}T[0-9]\{6\}Z\)\..*/\1/p" | sort -u -r |
        tail -n +"$((keep + 1))" | while read -r old; do
            rm -f -- "$folder/$old".*; say "removed the set $old"
        done
}

backup() {  # DEPLOYMENT ITEMS...: one set, all or nothing
    set_id="$1-$stamp"; deployment=$1; ok=1; shift
    while [ $# -gt 0 ]; do
        item=$1; shift
        case "$item" in
            volume) volume "$set_id" "$1" "$2" || { say "$deployment: volume $1 FAILED"; ok=0; }; shift 2 ;;
            postgres) postgres "$set_id" "$1" "$2" "$3" "$4" || { say "$deployment: postgres $1 FAILED"; ok=0; }; shift 4 ;;
            sqlite) sqlite "$set_id" "$1" "$2" "$3" || { say "$deployment: sqlite $1 FAILED"; ok=0; }; shift 3 ;;
        esac
    done
    if [ "$ok" = 1 ]; then
        keep_set "$set_id"; say "$deployment: kept $folder/$set_id.*"; prune "$deployment"
    else
        rm -f -- "$folder"/.partial-"$set_id".*; failed=1
    fi
}

backup quickpulse-prod \
    volume qp-prod-data opsfab/quickpulse-prod:latest
backup fluent-skills-prod \
    volume fluent-prod-data opsfab/fluent-skills-prod:latest
backup jiejiawater-prod \
    postgres pg pg-jiejia-prod jiejia jiejia

exit "$failed"
