#!/usr/bin/env bash
# Print the project's version: pyproject.toml's [project] version, the only one written by hand.
# The chart (scripts/sync-version.sh), the image's label (scripts/build-image.sh) and `make dist`
# take it from here; tests/test_version.py fails while any of them says otherwise.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The first `version = "..."` at the start of a line: [project]'s, the file's only such key
# (mypy's is python_version).
version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "$root/pyproject.toml" | head -n 1)
[ -n "$version" ] || { echo "error: no version in $root/pyproject.toml" >&2; exit 1; }
printf '%s\n' "$version"
