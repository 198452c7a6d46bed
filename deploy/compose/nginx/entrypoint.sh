#!/bin/sh
# nginx resolves the upstream names once, at start, and refuses to start if one does not resolve: wait (up to
# $NGINX_WAIT_SECONDS, default 60) until the compose network's DNS knows every replica, then nginx as PID 1.
set -eu
deadline=$(($(date +%s) + ${NGINX_WAIT_SECONDS:-60}))
for name in $(sed -n 's/^ *server \([^: ]*\):[0-9]*.*;/\1/p' /etc/nginx/nginx.conf); do
  until getent hosts "$name" >/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "nginx-entrypoint: $name does not resolve; starting anyway" >&2
      break
    fi
    sleep 0.5
  done
done
exec nginx -e stderr -g 'daemon off;' "$@"
