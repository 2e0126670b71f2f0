#!/usr/bin/env bash
# Backup of a 1 GiB named volume: `driftless backup run` (archive API →
# zstd -3 → SHA-256 → atomic write, then read back and decompress to verify)
# against `docker run … tar | zstd -3` of the same volume, in the same run.
# Not part of .ci/run. Needs Docker, Debian's busybox-static and zstd.
#
#   bash benches/backup_vs_tar.sh            # 1 GiB
#   SIZE_MIB=256 bash benches/backup_vs_tar.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB="${SIZE_MIB:-1024}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --bin driftless >/dev/null
bin="$CARGO_TARGET_DIR/release/driftless"

work="$(mktemp -d)"
project="dltbench$$"
env="bench"
image="driftless-bench/busybox:1"
cleanup() {
  docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f >/dev/null
  docker volume rm -f "${project}_data" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# An image with busybox's tar, base64 and head: built from the host's binary.
mkdir -p "$work/ctx/rootfs/bin"
cp /bin/busybox "$work/ctx/rootfs/bin/busybox"
for a in sh tar base64 head sleep; do ln -s busybox "$work/ctx/rootfs/bin/$a"; done
printf 'FROM scratch\nCOPY rootfs/ /\n' > "$work/ctx/Dockerfile"
docker build -q -t "$image" "$work/ctx" >/dev/null

# A repo with one service owning the volume, and two jobs on it.
repo="$work/repo"
mkdir -p "$repo/environments" "$repo/compose" "$repo/backups"
cat > "$repo/driftless.yaml" <<YAML
apiVersion: driftless/v1
targets:
  local:
    docker: {}
environments:
  $env:
    values: environments/values.yaml
    targets: [local]
    health: { deadline: 60s, settle: 1s }
YAML
echo '{}' > "$repo/environments/values.yaml"
cat > "$repo/compose/stack.yaml" <<YAML
name: $project
services:
  app:
    image: $image
    command: [sleep, "36000"]
    volumes: [data:/data]
volumes:
  data: {}
YAML
cat > "$repo/backups/jobs.yaml" <<YAML
jobs:
  - name: verified
    schedule: "@daily"
    source: { volume: { volume: data, service: app } }
    destination: { local: $work/out }
    compression: { zstd: 3 }
  - name: unverified
    schedule: "@daily"
    source: { volume: { volume: data, service: app } }
    destination: { local: $work/out }
    compression: { zstd: 3 }
    verify: { read_back: false }
YAML
git -C "$repo" init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=b -c user.email=b@b commit -qm bench
"$bin" reconcile --repo "$repo" --env "$env" --state-dir "$work/state" >/dev/null 2>&1

# 1 GiB of base64 text (compresses like logs or dumps do, about 3:4).
container="$(docker ps -q --filter "label=com.docker.compose.project=$project")"
docker exec "$container" sh -c "head -c $((SIZE_MIB * 1024 * 1024 * 3 / 4)) /dev/urandom | base64 > /data/blob"
docker exec "$container" sh -c "head -c 1 /data/blob >/dev/null"
sync

secs() { python3 -c 'import sys,time; print(f"{time.time():.3f}")'; }
run() {
  local label="$1"; shift
  local t0 t1
  t0="$(secs)"
  "$@" >/dev/null
  t1="$(secs)"
  python3 -c "print(f'%-34s %6.2f s' % ('$label', $t1 - $t0))"
}

echo "volume: $SIZE_MIB MiB of base64 text; $(nproc) cores"
for round in 1 2; do
  run "tar | zstd -3 (docker run)" sh -c "docker run --rm -v ${project}_data:/data:ro $image tar -cf - -C /data . | zstd -3 -q -T1 > $work/tar-$round.zst"
  run "driftless backup (no verify)" "$bin" backup run unverified --repo "$repo" --env "$env" --state-dir "$work/state"
  run "driftless backup (verified)" "$bin" backup run verified --repo "$repo" --env "$env" --state-dir "$work/state"
done
echo "sizes: tar|zstd $(stat -c %s "$work/tar-1.zst") bytes; driftless $(find "$work/out" -name '*.zst' -printf '%s\n' | head -1) bytes"
