#!/usr/bin/env bash
# Copy the repository's alert rules and Grafana dashboards into the Helm chart.
#
# Helm can read only files inside the chart, so the chart carries copies of
# prometheus/alerts.yml and grafana/dashboards/*.json under charts/bulk-progress-exporter/files/.
# The originals are the source of truth: edit them, run this script, commit both.
# tests/test_chart.py fails while the copies differ from the originals.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
files="$root/charts/bulk-progress-exporter/files"

mkdir -p "$files/dashboards"
cp "$root/prometheus/alerts.yml" "$files/alerts.yml"

# Dashboards: copy every original, drop copies whose original is gone.
shopt -s nullglob
for copy in "$files"/dashboards/*.json; do
  [ -e "$root/grafana/dashboards/$(basename "$copy")" ] || rm -- "$copy"
done
for original in "$root"/grafana/dashboards/*.json; do
  cp "$original" "$files/dashboards/"
done
echo "synced prometheus/alerts.yml and grafana/dashboards/*.json into charts/bulk-progress-exporter/files/"
