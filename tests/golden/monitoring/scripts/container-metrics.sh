#!/bin/sh
# Rendered by opsfab from hosts.toml; do not edit on the host.
# Writes the state of every container the inventory expects on cvm for
# node-exporter's textfile collector; run every minute from backups/scripts/opsfab.cron.
# State is read with `docker container inspect --format`, memory from the cgroup.
set -u
dir=/opt/ops/monitoring/textfile
out="$dir/opsfab_containers.prom"
tmp="$out.$$"
mkdir -p "$dir"

usage() {
    for f in "/sys/fs/cgroup/system.slice/docker-$1.scope/memory.current" \
             "/sys/fs/cgroup/docker/$1/memory.current" \
             "/sys/fs/cgroup/memory/docker/$1/memory.usage_in_bytes"; do
        if [ -r "$f" ]; then cat "$f"; return; fi
    done
    echo 0
}

{
    echo "# HELP opsfab_container_running 1 when the container runs."
    echo "# TYPE opsfab_container_running gauge"
    echo "# HELP opsfab_container_healthy 1 when healthy, 0 when starting or unhealthy."
    echo "# TYPE opsfab_container_healthy gauge"
    echo "# HELP opsfab_container_memory_usage_bytes Memory the container uses."
    echo "# TYPE opsfab_container_memory_usage_bytes gauge"
    echo "# HELP opsfab_container_memory_limit_bytes The container's limit in the inventory."
    echo "# TYPE opsfab_container_memory_limit_bytes gauge"
    while read -r name limit; do
        state=$(docker container inspect --format '{{.Id}} {{.State.Running}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$name" 2>/dev/null) || state=""
        set -- $state
        running=0; bytes=0
        if [ "${2:-}" = "true" ]; then running=1; bytes=$(usage "$1"); fi
        echo "opsfab_container_running{container=\"$name\"} $running"
        case "${3:-}" in
            healthy) echo "opsfab_container_healthy{container=\"$name\"} 1" ;;
            starting|unhealthy) echo "opsfab_container_healthy{container=\"$name\"} 0" ;;
        esac
        echo "opsfab_container_memory_usage_bytes{container=\"$name\"} $bytes"
        echo "opsfab_container_memory_limit_bytes{container=\"$name\"} $limit"
    done <<'CONTAINERS'
fluent-skills-dev 268435456
fluent-skills-prod 419430400
jiejia-admin-dev 67108864
jiejia-admin-prod 67108864
jiejia-api-dev 268435456
jiejia-api-prod 402653184
ops-alertmanager 16777216
ops-grafana 100663296
ops-loki 67108864
ops-nginx 33554432
ops-node-exporter 16777216
ops-prometheus 67108864
ops-promtail 67108864
pg-jiejia-dev 402653184
pg-jiejia-prod 536870912
quickpulse-dev 100663296
quickpulse-prod 134217728
redis-fluent-dev 67108864
redis-fluent-prod 134217728
redis-jiejia-dev 134217728
redis-jiejia-prod 201326592
CONTAINERS
    echo "opsfab_container_metrics_timestamp_seconds $(date +%s)"
} > "$tmp" && mv -f "$tmp" "$out"
