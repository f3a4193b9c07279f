#!/usr/bin/env bash
# The whole product on one machine, offline: the Hamsa emulator (realistic delivery), the Twilio
# emulator and the bridge, on loopback, sharing examples/offline.env.
#
#   examples/offline.sh start    start the three in the background, wait until each listens
#   examples/offline.sh stop     stop them
#   examples/offline.sh status   which are running; their logs are in .offline/
#
# It uses the `hamsa-bridge` on PATH (an activated venv), else .venv/bin/hamsa-bridge.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state=".offline"
bin="$(command -v hamsa-bridge || true)"
[ -n "$bin" ] || bin=".venv/bin/hamsa-bridge"
[ -x "$bin" ] || { echo "offline.sh: no hamsa-bridge: activate the venv first (. .venv/bin/activate)" >&2; exit 2; }

set -a
# shellcheck source=examples/offline.env
. "$here/offline.env"
set +a

# name, port, command
services=(
    "hamsa 8765 emulate-hamsa --realistic --port 8765"
    "twilio 8766 emulate-twilio --port 8766"
    "bridge 8080 serve --host 127.0.0.1 --port 8080"
)

listening() {  # PORT: 0 when something accepts connections on 127.0.0.1:PORT
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$1" 2>/dev/null
}

start() {
    mkdir -p "$state"
    for service in "${services[@]}"; do
        read -r name port args <<<"$service"
        if [ -f "$state/$name.pid" ] && kill -0 "$(cat "$state/$name.pid")" 2>/dev/null; then
            echo "$name: already running (pid $(cat "$state/$name.pid"))"
            continue
        fi
        if listening "$port"; then
            echo "offline.sh: port $port is taken by another program: stop it first" >&2
            exit 1
        fi
        # shellcheck disable=SC2086
        nohup "$bin" $args >"$state/$name.log" 2>&1 &
        echo $! >"$state/$name.pid"
        for _ in $(seq 1 300); do
            listening "$port" && break
            kill -0 "$(cat "$state/$name.pid")" 2>/dev/null || {
                echo "offline.sh: $name exited; its log ($state/$name.log):" >&2
                cat "$state/$name.log" >&2
                exit 1
            }
            sleep 0.1
        done
        listening "$port" || { echo "offline.sh: $name did not listen on $port within 30 s" >&2; exit 1; }
        echo "$name: listening on 127.0.0.1:$port (pid $(cat "$state/$name.pid"), log $state/$name.log)"
    done
}

stop() {
    for service in "${services[@]}"; do
        read -r name _ _ <<<"$service"
        [ -f "$state/$name.pid" ] || continue
        pid="$(cat "$state/$name.pid")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
            echo "$name: stopped"
        fi
        rm -f "$state/$name.pid"
    done
}

status() {
    for service in "${services[@]}"; do
        read -r name port _ <<<"$service"
        if [ -f "$state/$name.pid" ] && kill -0 "$(cat "$state/$name.pid")" 2>/dev/null; then
            echo "$name: running on 127.0.0.1:$port (pid $(cat "$state/$name.pid"))"
        else
            echo "$name: stopped"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: examples/offline.sh start|stop|status" >&2; exit 2 ;;
esac
