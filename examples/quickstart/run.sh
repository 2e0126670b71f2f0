#!/usr/bin/env bash
# The quick start: copy this folder into a fresh Git repo, deploy it to the
# local Docker engine, reconcile again (nothing to do), then edit a value,
# commit, and preview exactly what would change.
#
#   bash examples/quickstart/run.sh
#
# DRIFTLESS: the driftless command (default: `cargo run -q --release --`);
# QUICKSTART_PROJECT / QUICKSTART_PORT override the project name and the
# published port. Remove the stack afterwards with
# `docker compose -p quickstart down` (or the project name you gave).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
read -r -a driftless <<< "${DRIFTLESS:-cargo run -q --release --manifest-path $here/../../Cargo.toml --}"
work="$(mktemp -d)"
repo="$work/repo"
state="$work/state"
mkdir -p "$repo"
cp -r "$here/driftless.yaml" "$here/environments" "$here/compose" "$repo/"
if [ -n "${QUICKSTART_PROJECT:-}" ]; then
  sed -i "s/^project: .*/project: $QUICKSTART_PROJECT/" "$repo/environments/dev.yaml"
fi
if [ -n "${QUICKSTART_PORT:-}" ]; then
  sed -i "s/^web_port: .*/web_port: $QUICKSTART_PORT/" "$repo/environments/dev.yaml"
fi
git() { command git -C "$repo" -c user.name=quickstart -c user.email=quickstart@localhost "$@"; }
git init -q
git add -A
git commit -q -m "quick start"

echo "== 1. deploy: render, check, plan against the engine, apply, wait for health"
"${driftless[@]}" reconcile --env dev --repo "$repo" --state-dir "$state"

echo
echo "== 2. again: the live state already equals the commit"
"${driftless[@]}" reconcile --env dev --repo "$repo" --state-dir "$state" --detailed-exitcode

echo
echo "== 3. edit a value, commit, preview the change (nothing is applied)"
sed -i "s/^greeting: .*/greeting: hello again/" "$repo/environments/dev.yaml"
git commit -q -am "a new greeting"
"${driftless[@]}" reconcile --env dev --repo "$repo" --state-dir "$state" --dry-run

echo
echo "== the record of what ran"
"${driftless[@]}" history --env dev --state-dir "$state"
echo
echo "repo: $repo (apply step 3 with: ${driftless[*]} reconcile --env dev --repo $repo --state-dir $state)"
