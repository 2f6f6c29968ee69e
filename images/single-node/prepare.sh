#!/bin/sh
# Give the single node's files the owners and modes `medhub up` needs (run as root, idempotent):
# the hub runs as 999:100 (never root) and must read the settings, catalog, secret, TLS files
# and datasets, and own its state folder and audit anchor; nobody else may read the secrets.
#
#   ./prepare.sh            (ETC, STATE and DATASETS may be set to other folders than the defaults)
set -eu
ETC=${ETC:-/etc/medhub}
STATE=${STATE:-/var/lib/medhub}
DATASETS=${DATASETS:-/srv/medhub/datasets}
HUB=999:100

install -d -o 999 -g 100 -m 700 "$STATE" "$STATE-audit-anchor"
chown root:100 "$ETC" && chmod 750 "$ETC"
for file in medhub.toml datasets.toml; do
  chown root:100 "$ETC/$file" && chmod 640 "$ETC/$file"
done
if [ ! -s "$ETC/oidc-client-secret" ]; then
  echo "prepare.sh: put the client secret the identity provider gave medhub in $ETC/oidc-client-secret" >&2
  exit 1
fi
chown root:100 "$ETC/oidc-client-secret" && chmod 640 "$ETC/oidc-client-secret"
if [ -d "$ETC/tls" ]; then
  chown -R root:100 "$ETC/tls" && chmod 750 "$ETC/tls" && chmod 640 "$ETC/tls"/*
fi
if [ -d "$DATASETS" ]; then  # read by the hub (to check manifests) and bound read-only into servers
  chgrp -R 100 "$DATASETS" && chmod -R g+rX,o-w "$DATASETS"
fi
echo "prepared: state $STATE ($HUB, 0700), settings and secrets in $ETC (root:100, 0640)"
