#!/bin/sh
# Healthcheck of the `buckets` companion: every bucket in /init/buckets.txt exists and is readable
# with the monitoring account (the alias `monitoring` is set by the companion's command). Exits
# non-zero, naming the bucket, as soon as one is missing.
set -eu

while read -r bucket; do
  case "$bucket" in '' | '#'*) continue ;; esac
  if ! mc ls "monitoring/$bucket" >/dev/null 2>&1; then
    echo "bucket $bucket is missing or not readable with the monitoring account" >&2
    exit 1
  fi
done </init/buckets.txt
