#!/usr/bin/env bash
# Write pyproject.toml's version into the Helm chart's `version` and `appVersion`.
#
# Helm reads a chart's versions from its Chart.yaml only, so the chart carries a copy of the
# project's version (the image tag defaults to appVersion). pyproject.toml is the source of
# truth: change the version there, run this script, commit both. tests/test_version.py fails
# while they differ.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="$root/charts/bulk-progress-exporter/Chart.yaml"
version=$(bash "$root/scripts/version.sh")

sed -i \
  -e "s/^version: .*/version: $version/" \
  -e "s/^appVersion: .*/appVersion: \"$version\"/" \
  "$chart"
echo "charts/bulk-progress-exporter/Chart.yaml: version and appVersion $version"
