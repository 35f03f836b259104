#!/usr/bin/env bash
# Makes sure redis-server is installed (from Debian's packages when running as root, else it
# explains what is missing) and that a Redis server answers on REDIS_URL's host and port
# (default 127.0.0.1:6379): uses a running one, else starts one.
set -euo pipefail

host=127.0.0.1
port=6379
if [[ -n "${REDIS_URL:-}" ]]; then
  hostport=${REDIS_URL#redis://}
  hostport=${hostport##*@}
  hostport=${hostport%%/*}
  host=${hostport%%:*}
  [[ "$hostport" == *:* ]] && port=${hostport##*:}
fi

answers() {
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -h "$host" -p "$port" ping 2>/dev/null | grep -q PONG
  else
    (exec 3<>"/dev/tcp/$host/$port" && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null
  fi
}

# The distributed tests also start redis-server processes of their own (to kill and restart
# them), so the binary is needed even when a server already answers.
if ! command -v redis-server >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-server is not installed; installing it from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "error: the tests need redis-server. Install it (apt-get install redis-server) or" >&2
    echo "start one and point REDIS_URL at it, then run make test again." >&2
    exit 1
  fi
fi

if answers; then
  exit 0
fi

echo "starting redis-server on $host:$port" >&2
redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
  --dir /tmp --logfile "/tmp/athena-test-redis-$port.log"
for _ in $(seq 1 50); do
  answers && exit 0
  sleep 0.1
done
echo "error: redis-server did not answer on $host:$port" >&2
exit 1
