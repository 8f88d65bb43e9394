#!/usr/bin/env bash
# A real multi-node Ray cluster on one machine: a Chroma server, a Ray head and worker
# raylets joined with `ray start --address`, adapters and Ray Train storage on a shared
# URI, then `serve deploy`. The same settings a real cluster sets in cluster.yaml or the
# KubeRay manifests, with every node on 127.0.0.1.
#
#   deploy/local-cluster.sh up [serve_config.yaml]   start everything and deploy (waits until RUNNING)
#   deploy/local-cluster.sh status                   nodes, Serve status, processes
#   deploy/local-cluster.sh kill-node NAME           SIGKILL one worker node's processes (a node lost)
#   deploy/local-cluster.sh start-node NAME          start that worker node again (it rejoins)
#   deploy/local-cluster.sh down                     stop only what `up` started
#
# Environment (defaults in brackets):
#   ECHORAG_LC_DIR       state: logs, pids, Ray temp dir, Chroma, shared storage [./.local-cluster]
#   ECHORAG_LC_PORT      first of the ports it uses; it takes this one and the next 500 [26000]
#   ECHORAG_LC_NODES     "name:cpus[:role,role]" per node, the head first [head:4:serve w1:2:train w2:2:serve]
#                        Each node gets the custom resource echorag_node_<name> (1) and
#                        echorag_<role> (1000) per role; e.g. ECHORAG_FINETUNE_WORKER_RESOURCES=
#                        '{"echorag_train": 1}' trains on the train nodes.
#   ECHORAG_LC_HTTP_PORT Serve's HTTP port on 127.0.0.1 [the config's http_options.port]
#   ECHORAG_LC_IP        the loopback address the Ray nodes use (GCS, dashboard) [127.0.0.2]
#   ECHORAG_LC_SHARED    the shared storage root every node reads [file://$ECHORAG_LC_DIR/shared]
#   ECHORAG_LC_SYSTEM_CONFIG  JSON for the head's --system-config (e.g. faster node health checks)
#   ECHORAG_* settings are passed on to every node (ECHORAG_DATA_DIR, ECHORAG_ADMIN_TOKEN, ...);
#   ECHORAG_CHROMA_HOST/PORT, ECHORAG_ADAPTERS_URI and ECHORAG_TRAIN_STORAGE_URI are set here
#   unless given. RAY_AUTH_MODE is Ray's default (token) unless set.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$REPO/.venv/bin"
[[ -x "$BIN/ray" ]] || BIN="$(dirname "$(command -v ray)")"
PY="$BIN/python"

LC_DIR="$(mkdir -p "${ECHORAG_LC_DIR:-$REPO/.local-cluster}" && cd "${ECHORAG_LC_DIR:-$REPO/.local-cluster}" && pwd)"
BASE="${ECHORAG_LC_PORT:-26000}"
NODES="${ECHORAG_LC_NODES:-head:4:serve w1:2:train w2:2:serve}"
SHARED="${ECHORAG_LC_SHARED:-file://$LC_DIR/shared}"
GCS_PORT=$BASE
DASHBOARD_PORT=$((BASE + 1))
CHROMA_PORT=$((BASE + 2))
CLIENT_PORT=$((BASE + 3))
# Every node on a loopback address of its own: Ray replaces 127.0.0.1 by the machine's
# network address, never 127.0.0.2, so no Ray traffic leaves the loopback interface.
IP="${ECHORAG_LC_IP:-127.0.0.2}"
GCS="$IP:$GCS_PORT"
DASHBOARD="http://$IP:$DASHBOARD_PORT"
TEMP="$LC_DIR/ray"   # Ray's temp dir: its own, so ray.init() elsewhere never finds this cluster

read -r -a NODE_SPECS <<< "$NODES"

SETSID_EXEC='import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])'

die() { echo "local-cluster: $*" >&2; exit 1; }
log() { echo "local-cluster: $*" >&2; }

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_index() {  # index of node NAME in NODE_SPECS
  local i
  for i in "${!NODE_SPECS[@]}"; do
    [[ "${NODE_SPECS[$i]%%:*}" == "$1" ]] && { echo "$i"; return; }
  done
  die "no node named $1 in ECHORAG_LC_NODES ($NODES)"
}

node_resources() {  # '{"echorag_node_<name>": 1, "echorag_<role>": 1000, ...}'
  local name cpus roles json role
  IFS=: read -r name cpus roles <<< "$1"
  json="\"echorag_node_$name\": 1"
  for role in ${roles//,/ }; do json="$json, \"echorag_$role\": 1000"; done
  echo "{$json}"
}

export_settings() {
  export ECHORAG_CHROMA_HOST="${ECHORAG_CHROMA_HOST:-127.0.0.1}"
  export ECHORAG_CHROMA_PORT="${ECHORAG_CHROMA_PORT:-$CHROMA_PORT}"
  export ECHORAG_ADAPTERS_URI="${ECHORAG_ADAPTERS_URI:-$SHARED/adapters}"
  export ECHORAG_TRAIN_STORAGE_URI="${ECHORAG_TRAIN_STORAGE_URI:-$SHARED/train}"
  export ECHORAG_DATA_DIR="${ECHORAG_DATA_DIR:-$LC_DIR/data}"
  export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}" RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
  export ANONYMIZED_TELEMETRY="${ANONYMIZED_TELEMETRY:-False}"
}

start_node() {  # start_node INDEX: one raylet (the head at 0), in its own process group
  local i=$1 name cpus roles p
  IFS=: read -r name cpus roles <<< "${NODE_SPECS[$i]}"
  p=$((BASE + 10 + 10 * i))   # per node: 10 fixed ports; worker ports from BASE+200
  local args=(
    --node-ip-address="$IP" --num-cpus="$cpus" --num-gpus=0
    --resources="$(node_resources "${NODE_SPECS[$i]}")"
    --node-manager-port=$p --object-manager-port=$((p + 1)) --metrics-export-port=$((p + 2))
    --dashboard-agent-listen-port=$((p + 3)) --dashboard-agent-grpc-port=$((p + 4))
    --runtime-env-agent-port=$((p + 5))
    --min-worker-port=$((BASE + 200 + 30 * i)) --max-worker-port=$((BASE + 229 + 30 * i))
    --temp-dir="$TEMP" --disable-usage-stats --block
  )
  if [[ $i -eq 0 ]]; then
    args+=(--head --port=$GCS_PORT --dashboard-host="$IP" --dashboard-port=$DASHBOARD_PORT
           --include-dashboard=true --ray-client-server-port=$CLIENT_PORT)
    [[ -n "${ECHORAG_LC_SYSTEM_CONFIG:-}" ]] && args+=(--system-config="$ECHORAG_LC_SYSTEM_CONFIG")
  else
    args+=(--address="$GCS")
  fi
  # A node's own scratch (TMPDIR): e.g. each node downloads adapter versions into its own cache.
  mkdir -p "$LC_DIR/nodes/$name/tmp"
  # In a session of its own: the node's ray start, raylet, agents and workers share one
  # process group, which kill-node and down signal as a whole. (exec keeps the pid.)
  ( cd "$REPO" && TMPDIR="$LC_DIR/nodes/$name/tmp" exec "$PY" -c "$SETSID_EXEC" "$BIN/ray" start "${args[@]}" \
      > "$LC_DIR/nodes/$name/ray-start.log" 2>&1 < /dev/null ) &
  echo $! > "$LC_DIR/nodes/$name/pid"
  log "node $name: pid $(cat "$LC_DIR/nodes/$name/pid"), $cpus CPUs, resources $(node_resources "${NODE_SPECS[$i]}")"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" > /dev/null 2>&1; do
    (( SECONDS < deadline )) || die "timed out waiting for $what"
    sleep 1
  done
}

alive_nodes() {  # the number of alive nodes the GCS knows
  "$PY" - "$GCS" <<'EOF'
import sys
from ray.util.state import list_nodes
print(sum(n.state == "ALIVE" for n in list_nodes(address=sys.argv[1], timeout=10)))
EOF
}

nodes_alive() { [[ "$(alive_nodes 2>/dev/null)" == "$1" ]]; }

chroma_up() { "$PY" -c "import httpx,sys; httpx.get('http://127.0.0.1:$CHROMA_PORT/api/v2/heartbeat', timeout=2).raise_for_status()"; }

serve_config() {  # the config to deploy: $1 with Serve's HTTP on 127.0.0.1 (and ECHORAG_LC_HTTP_PORT)
  "$PY" - "$1" "$LC_DIR/serve_config.yaml" "${ECHORAG_LC_HTTP_PORT:-}" <<'EOF'
import sys, yaml
source, target, port = sys.argv[1:]
config = yaml.safe_load(open(source, encoding="utf-8"))
http = config.setdefault("http_options", {})
http["host"] = "127.0.0.1"
if port:
    http["port"] = int(port)
yaml.safe_dump(config, open(target, "w", encoding="utf-8"), sort_keys=False, allow_unicode=True)
print(http.get("port", 8000))
EOF
}

app_status() {  # the echorag application's status (RUNNING, DEPLOYING, DEPLOY_FAILED, ...)
  "$BIN/serve" status -a "$DASHBOARD" 2>/dev/null | "$PY" -c "
import sys, yaml
apps = (yaml.safe_load(sys.stdin) or {}).get('applications') or {}
app = next(iter(apps.values()), {})
print(app.get('status', 'NONE'))
if app.get('status') == 'DEPLOY_FAILED': print(app.get('message', ''), file=sys.stderr)"
}

cmd_up() {
  local config="${1:-$REPO/serve_config.yaml}" i http_port
  [[ -f "$config" ]] || die "no serve config at $config"
  alive "$LC_DIR/nodes/${NODE_SPECS[0]%%:*}/pid" && die "already up (ECHORAG_LC_DIR=$LC_DIR); run down first"
  mkdir -p "$LC_DIR/chroma" "$LC_DIR/nodes"
  export_settings
  mkdir -p "$ECHORAG_DATA_DIR"
  [[ "$SHARED" == file://* ]] && mkdir -p "${SHARED#file://}"

  log "chroma server on 127.0.0.1:$CHROMA_PORT ($LC_DIR/chroma)"
  ( exec "$PY" -c "$SETSID_EXEC" "$BIN/chroma" run --host 127.0.0.1 --port "$CHROMA_PORT" --path "$LC_DIR/chroma" \
      > "$LC_DIR/chroma.log" 2>&1 < /dev/null ) &
  echo $! > "$LC_DIR/chroma.pid"
  wait_for 60 "the chroma server" chroma_up

  # One node after the other: raylets registering at once on a busy machine time out.
  for i in "${!NODE_SPECS[@]}"; do
    start_node "$i"
    wait_for 120 "node ${NODE_SPECS[$i]%%:*} to join" nodes_alive $((i + 1))
  done
  log "cluster up: GCS $GCS, dashboard $DASHBOARD, ${#NODE_SPECS[@]} nodes"

  http_port="$(serve_config "$config")"
  echo "$http_port" > "$LC_DIR/http_port"
  log "serve deploy $config (HTTP on 127.0.0.1:$http_port)"
  (cd "$REPO" && "$BIN/serve" deploy "$LC_DIR/serve_config.yaml" -a "$DASHBOARD")
  local deadline=$((SECONDS + ${ECHORAG_LC_DEPLOY_TIMEOUT:-600})) status=NONE
  while (( SECONDS < deadline )); do
    status="$(app_status || true)"
    [[ "$status" == RUNNING ]] && break
    [[ "$status" == DEPLOY_FAILED ]] && die "the application failed to deploy (serve status -a $DASHBOARD)"
    sleep 2
  done
  [[ "$status" == RUNNING ]] || die "the application is $status after ${ECHORAG_LC_DEPLOY_TIMEOUT:-600} s"
  log "EchoRAG is RUNNING: http://127.0.0.1:$http_port"
}

stop_group() {  # stop_group PIDFILE: SIGTERM the process group, SIGKILL what is left after 20 s
  local pidfile=$1 pid
  alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid="$(cat "$pidfile")"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 40); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

cmd_down() {
  local i
  for (( i = ${#NODE_SPECS[@]} - 1; i >= 0; i-- )); do
    local name="${NODE_SPECS[$i]%%:*}"
    [[ -f "$LC_DIR/nodes/$name/pid" ]] && { log "stopping node $name"; stop_group "$LC_DIR/nodes/$name/pid"; }
  done
  if [[ -f "$LC_DIR/chroma.pid" ]]; then
    log "stopping the chroma server"
    alive "$LC_DIR/chroma.pid" && kill -TERM "$(cat "$LC_DIR/chroma.pid")" 2>/dev/null || true
    for _ in $(seq 20); do alive "$LC_DIR/chroma.pid" || break; sleep 0.5; done
    alive "$LC_DIR/chroma.pid" && kill -KILL "$(cat "$LC_DIR/chroma.pid")" 2>/dev/null || true
    rm -f "$LC_DIR/chroma.pid"
  fi
  log "down (state kept in $LC_DIR)"
}

cmd_kill_node() {
  local i name pid
  i="$(node_index "$1")"
  [[ $i -gt 0 ]] || die "kill-node is for worker nodes; the head holds the GCS (use down)"
  name="${NODE_SPECS[$i]%%:*}"
  alive "$LC_DIR/nodes/$name/pid" || die "node $name is not running"
  pid="$(cat "$LC_DIR/nodes/$name/pid")"
  kill -KILL -- "-$pid"   # the raylet, its agents and every worker process at once
  rm -f "$LC_DIR/nodes/$name/pid"
  log "node $name killed (process group $pid)"
}

cmd_start_node() {
  local i
  i="$(node_index "$1")"
  [[ $i -gt 0 ]] || die "start-node is for worker nodes"
  alive "$LC_DIR/nodes/$1/pid" && die "node $1 is running"
  export_settings
  start_node "$i"
}

cmd_status() {
  local i name state
  export_settings
  for i in "${!NODE_SPECS[@]}"; do
    name="${NODE_SPECS[$i]%%:*}"
    state=stopped
    alive "$LC_DIR/nodes/$name/pid" && state="running (process group $(cat "$LC_DIR/nodes/$name/pid"))"
    echo "node $name: $state"
  done
  state=stopped
  alive "$LC_DIR/chroma.pid" && state="running on 127.0.0.1:$CHROMA_PORT (pid $(cat "$LC_DIR/chroma.pid"))"
  echo "chroma: $state"
  if alive "$LC_DIR/nodes/${NODE_SPECS[0]%%:*}/pid"; then
    "$BIN/ray" status --address "$GCS" || true
    "$BIN/serve" status -a "$DASHBOARD" || true
  fi
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill-node) [[ $# -eq 2 ]] || die "usage: $0 kill-node NAME"; cmd_kill_node "$2" ;;
  start-node) [[ $# -eq 2 ]] || die "usage: $0 start-node NAME"; cmd_start_node "$2" ;;
  *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2 ;;
esac
