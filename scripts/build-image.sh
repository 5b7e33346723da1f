#!/usr/bin/env bash
# Build the container image with podman, on a machine without a Docker daemon or a registry.
#
#   scripts/build-image.sh          build bulk-progress-exporter:test (IMAGE=... to rename it)
#   scripts/build-image.sh --env    print the podman settings it uses, as shell `export` lines:
#                                   eval "$(scripts/build-image.sh --env)"; podman run ...
#   scripts/build-image.sh --version  print the version the image is labelled with
#                                   (org.opencontainers.image.version): pyproject.toml's
#
# The official python:3.12-slim-bookworm cannot be pulled on our machines, so by default the image
# is built FROM a stand-in: Debian bookworm made with debootstrap, with a venv at /usr/local so
# that python, pip and site-packages sit where the official image has them (Python 3.11, so it
# tests how the image is put together, not Python 3.12 itself). The stand-in is built once (about
# a minute), kept as a tarball under .cache/image/ and as a podman image; later runs only build.
# Where the official image can be pulled: BASE_IMAGE=python:3.12-slim-bookworm scripts/build-image.sh
#
# podman runs with private settings (containers.conf, storage.conf and its storage under
# .cache/image/podman/, run state under /run), so nothing global is touched. Run as root.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${BPE_IMAGE_CACHE:-$repo/.cache/image}
image=${IMAGE:-bulk-progress-exporter:test}
standin=localhost/bulk-progress-exporter-base:bookworm-standin
base=${BASE_IMAGE:-$standin}

mkdir -p "$cache/podman"
# Run state belongs on a tmpfs (podman notices reboots there); one directory per cache.
rundir=${XDG_RUNTIME_DIR:-/run}/bpe-podman-$(printf %s "$cache" | md5sum | cut -c1-8)
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576

cat >"$cache/podman/containers.conf.new" <<EOF
# Written by scripts/build-image.sh: crun refuses this kind of host's hybrid cgroups, there is no
# systemd for podman's cgroups or events, and podman's default ulimits cannot be set here.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$cache/podman/events.log"
tmp_dir = "$rundir/libpod"
EOF
cat >"$cache/podman/storage.conf.new" <<EOF
# Written by scripts/build-image.sh.
[storage]
driver = "overlay"
graphroot = "$cache/podman/storage"
runroot = "$rundir/storage"
EOF
for f in containers.conf storage.conf; do
  if cmp -s "$cache/podman/$f.new" "$cache/podman/$f"; then
    rm "$cache/podman/$f.new"
  else
    mv "$cache/podman/$f.new" "$cache/podman/$f"
  fi
done
export CONTAINERS_CONF="$cache/podman/containers.conf"
export CONTAINERS_STORAGE_CONF="$cache/podman/storage.conf"

version=$(bash "$repo/scripts/version.sh")
if [ "${1:-}" = --version ]; then
  printf '%s\n' "$version"
  exit 0
fi
if [ "${1:-}" = --env ]; then
  printf 'export CONTAINERS_CONF=%q\nexport CONTAINERS_STORAGE_CONF=%q\n' \
    "$CONTAINERS_CONF" "$CONTAINERS_STORAGE_CONF"
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--env | --version]" >&2; exit 2; }
for tool in podman runc; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (make tools)" >&2; exit 1; }
done

start=$SECONDS
# A lock, so that two runs (two test sessions) do not build the stand-in or the image together.
exec 9>"$cache/build.lock"
flock 9

build_standin() {
  local tarball=$cache/standin-rootfs.tar
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (make tools)" >&2; exit 1; }
    local mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [ -z "$mirror" ]; then
      mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    mirror=${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}
    local rootfs=$cache/standin-rootfs
    rm -rf "$rootfs"
    echo "building the stand-in base with debootstrap from $mirror" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    # PyPI may be reached through a TLS-inspecting proxy: trust what the host trusts.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
      cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    fi
    chroot "$rootfs" update-ca-certificates >/dev/null
    chroot "$rootfs" python3 -m venv /usr/local
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  podman import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    --quiet "$tarball" "$standin" >/dev/null
}

if [ "$base" = "$standin" ] && ! podman image exists "$standin"; then
  build_standin
  echo "stand-in base ready in $((SECONDS - start)) s" >&2
fi

build_start=$SECONDS
# --format docker: the OCI format drops HEALTHCHECK. --network host: pip reaches PyPI without
# podman setting up a bridge (and its firewall rules) on the host.
podman build --format docker --network host --build-arg BASE_IMAGE="$base" \
  --build-arg VERSION="$version" -t "$image" "$repo" >&2
# Rebuilds leave the previous image untagged; drop those after a day (keeps the layer cache).
podman image prune -f --filter until=24h >/dev/null 2>&1 || true
echo "image $image built in $((SECONDS - build_start)) s ($((SECONDS - start)) s in all)" >&2
