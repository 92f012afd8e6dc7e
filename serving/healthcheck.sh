#!/usr/bin/env bash
# Container health check: healthy when the model's REST status has an AVAILABLE
# version. Uses bash's /dev/tcp only (the tensorflow/serving image has no curl).
#   HEALTHCHECK_MODEL (default text_classifier), HEALTHCHECK_PORT (default 8501),
#   HEALTHCHECK_HOST (default 127.0.0.1)
set -euo pipefail
model="${HEALTHCHECK_MODEL:-text_classifier}"
port="${HEALTHCHECK_PORT:-8501}"
host="${HEALTHCHECK_HOST:-127.0.0.1}"
exec 3<>"/dev/tcp/${host}/${port}"
printf 'GET /v1/models/%s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' \
  "$model" "$host" >&3
response="$(timeout 5 cat <&3 || true)"
exec 3<&-
if grep -Eq '"state" *: *"AVAILABLE"' <<<"$response"; then
  exit 0
fi
echo "model ${model} is not AVAILABLE on ${host}:${port}: ${response:0:300}" >&2
exit 1
