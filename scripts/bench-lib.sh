# Shared by scripts/bench and scripts/bench-peer (sourced, not run): free
# loopback ports, a private influxd and a private hub configured the same
# way for every benchmark. The caller sets $work (scratch directory), $out
# (logs) and the array pids (children, stopped newest first by its trap).

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# pick_port N: the first free port from N up that no earlier pick_port of
# this script returned (a port stays free until its server binds it).
picked=" "
pick_port() {
  local p=$1
  while ! port_free "$p" || [[ $picked == *" $p "* ]]; do p=$((p + 1)); done
  picked+="$p "
  echo "$p"
}

# wait_for WHAT TRIES CMD...: runs CMD every 0.1 s until it succeeds, at
# most TRIES times; fails naming WHAT.
wait_for() {
  local what=$1 tries=$2
  shift 2
  for _ in $(seq 1 "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$what did not come up; logs in $out" >&2
  return 1
}

# start_influxd NAME: a fresh InfluxDB 1.8 under $work/NAME with database
# telemetry; sets influx_port and influx_pid.
start_influxd() {
  local name=$1 rpc
  influx_port=$(pick_port 18086)
  rpc=$(pick_port 18088)
  cat > "$work/$name.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$rpc"
[meta]
  dir = "$work/$name/meta"
[data]
  dir = "$work/$name/data"
  wal-dir = "$work/$name/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$influx_port"
  flux-enabled = true
  log-enabled = false
[logging]
  level = "warn"
[monitor]
  store-enabled = false
CONF
  bin/influxd run -config "$work/$name.conf" >"$out/$name.log" 2>&1 &
  influx_pid=$!
  pids+=("$influx_pid")
  wait_for "$name" 300 curl -fsS "http://127.0.0.1:$influx_port/health"
  curl -fsS -XPOST "http://127.0.0.1:$influx_port/query" --data-urlencode "q=CREATE DATABASE telemetry" >/dev/null
}

# start_hub: a fresh hub on the influxd of the last start_influxd, with the
# rate and spool limits out of the way of the load; sets http_port,
# mqtt_port, hub_pid, admin and ready_ms.
start_hub() {
  local start_ns
  http_port=$(pick_port 18080)
  mqtt_port=$(pick_port 18883)
  admin="fho_bench_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  start_ns=$(date +%s%N)
  FIELDHUB_HTTP_ADDR="127.0.0.1:$http_port" FIELDHUB_MQTT_ADDR="127.0.0.1:$mqtt_port" \
  FIELDHUB_DATA_DIR="$work/hub" FIELDHUB_INFLUX_URL="http://127.0.0.1:$influx_port" FIELDHUB_INFLUX_BUCKET="telemetry/autogen" \
  FIELDHUB_ADMIN_TOKEN="$admin" FIELDHUB_RATE_LIMIT=100000 FIELDHUB_RATE_BURST=100000 \
  FIELDHUB_MQTT_CONNECT_RATE=100000 FIELDHUB_SPOOL_MAX_BYTES=8589934592 FIELDHUB_LOG_LEVEL=warn \
  bin/fieldhub serve >"$out/fieldhub.out" 2>"$out/fieldhub.log" &
  hub_pid=$!
  pids+=("$hub_pid")
  for _ in $(seq 1 3000); do curl -fsS "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break; sleep 0.01; done
  ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
}

# stop_all: stops the children newest first (the hub flushes into a
# running influxd) and forgets them.
stop_all() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  pids=()
}
