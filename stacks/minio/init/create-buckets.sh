#!/bin/sh
# Run by the one-shot minio-init service (quay.io/minio/mc, a ubi-micro image: a shell and coreutils,
# but no grep, sed or awk). Idempotent, so it runs again on every deploy of the stack:
#   1. create every bucket listed in /init/buckets.txt (existing buckets are left alone);
#   2. (re)write the `monitoring-rw` policy: read/write on exactly those buckets;
#   3. create or update the monitoring account (MINIO_MONITORING_ACCESS_KEY / _SECRET_KEY) and attach
#      the policy to it. Mimir, Loki and Tempo use this account, never the root credentials.
set -eu

mc alias set minio http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null

resources=""
while read -r bucket; do
  case "$bucket" in '' | '#'*) continue ;; esac
  mc mb --ignore-existing "minio/$bucket"
  resources="$resources\"arn:aws:s3:::$bucket\", \"arn:aws:s3:::$bucket/*\", "
done </init/buckets.txt
resources="${resources%, }"

cat >/tmp/monitoring-rw.json <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:*"], "Resource": [$resources]}
  ]
}
EOF
mc admin policy create minio monitoring-rw /tmp/monitoring-rw.json

mc admin user add minio "$MINIO_MONITORING_ACCESS_KEY" "$MINIO_MONITORING_SECRET_KEY"
# `attach` fails when the policy is already attached; detach first so a re-run is a no-op.
mc admin policy detach minio monitoring-rw --user "$MINIO_MONITORING_ACCESS_KEY" >/dev/null 2>&1 || true
mc admin policy attach minio monitoring-rw --user "$MINIO_MONITORING_ACCESS_KEY"

echo "minio-init: buckets and the monitoring account are in place"
