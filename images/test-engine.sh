#!/bin/sh
# A Docker engine and the notebook, hub and edge images for the end-to-end container tests, without a
# registry (the recipe of ../shared/DOCKER.md): Debian's docker.io, dockerd with its iptables
# rules (the users' network drops traffic between containers), a debootstrap-made base image
# from the Debian mirror this machine's apt uses (a site mirror works unchanged), and both
# images built on it from wheels made on the host (the hub image's npm install trusts the host's
# CA bundle). Idempotent; prints why and exits non-zero if an engine cannot start, and the
# container tests then say so when they skip.
#
#   images/test-engine.sh [PYTHON]        (PYTHON: the venv's python that makes the wheels)
set -eu
PYTHON=${1:-.venv/bin/python}
IMAGE=medhub/notebook:test
HUB_IMAGE=medhub/hub:test
EDGE_IMAGE=medhub/edge:test
LABEL=org.medhub.test-engine=1  # on every image built here, so that the ones a rebuild replaced can be pruned
SUDO=$(command -v sudo >/dev/null 2>&1 && [ "$(id -u)" != 0 ] && echo sudo || true)

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker.io debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  $SUDO sh -c 'dockerd >/tmp/medhub-dockerd.log 2>&1 &'
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start: see /tmp/medhub-dockerd.log" >&2; exit 1; }
fi
if ! docker image inspect local/debian:bookworm >/dev/null 2>&1; then
  # the archive apt reads bookworm's packages from (sources.list or deb822 .sources alike)
  mirror=$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 'Identifier: Packages' | awk '$1 == "bookworm" {print $2; exit}')
  [ -n "$mirror" ] || { echo "no Debian bookworm archive in this machine's apt sources: add one (a site mirror will do)" >&2; exit 1; }
  root=$(mktemp -d)
  $SUDO debootstrap --variant=minbase bookworm "$root/rootfs" "$mirror" >/dev/null
  $SUDO tar -C "$root/rootfs" -c . | docker import - local/debian:bookworm >/dev/null
  $SUDO rm -rf "$root"
fi
# Wheels of every dependency, made once per pyproject.toml; the images are rebuilt on every run
# (Docker's cache makes that quick when nothing changed) so that they hold the current code.
stamp=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat build/wheels/.made 2>/dev/null)" != "$stamp" ]; then
  rm -rf build/wheels && mkdir -p build/wheels
  "$PYTHON" -m pip wheel -q --wheel-dir build/wheels "setuptools>=69" wheel torch==2.13.0 ".[hub,kubernetes,notebook,edge,federated]"
  # Debian bookworm's Python is 3.11.2: soupsieve 3 and later want 3.11.5
  rm -f build/wheels/soupsieve-*.whl
  "$PYTHON" -m pip wheel -q --no-deps --wheel-dir build/wheels "soupsieve<3"
  echo "$stamp" > build/wheels/.made
fi
docker build -q --network host --label "$LABEL" -f images/notebook/Dockerfile --build-arg BASE=local/debian:bookworm \
  --build-arg WHEELS=build/wheels -t "$IMAGE" . >/dev/null
cp /etc/ssl/certs/ca-certificates.crt build/ca.pem
docker build -q --network host --label "$LABEL" -f images/hub/Dockerfile --build-arg BASE=local/debian:bookworm \
  --build-arg WHEELS=build/wheels --build-arg CA_BUNDLE=build/ca.pem -t "$HUB_IMAGE" . >/dev/null
docker build -q --network host --label "$LABEL" -f images/edge/Dockerfile --build-arg BASE=local/debian:bookworm \
  --build-arg WHEELS=build/wheels -t "$EDGE_IMAGE" . >/dev/null
# each rebuild leaves the image it replaced behind, untagged (several GB a run): remove those
docker image prune -f --filter "label=$LABEL" >/dev/null
echo "docker engine up; $IMAGE, $HUB_IMAGE and $EDGE_IMAGE ready"
