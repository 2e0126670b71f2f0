#!/usr/bin/env bash
# Side-by-side: driftless vs the Compose CLI on the same 14-service stack of
# fixture images, on this machine's Docker engine, in one run.
#
#   benches/compose_vs_cli.sh            # needs: docker, docker-compose, hyperfine, busybox-static
#
# Measures (hyperfine, release build):
#   no-op:  `driftless reconcile` (plan + apply nothing + verify) and
#           `driftless reconcile --dry-run`, vs `docker-compose up -d` with nothing to do
#   cold:   deploy from nothing, vs `docker-compose up -d` from nothing
# The stack has no healthchecks and the environment a 0 s settle window, so
# driftless's verify step waits for nothing `up -d` would not wait for.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in docker docker-compose hyperfine; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install docker-compose hyperfine)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "missing /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
cargo build --release --locked --quiet
DL="$CARGO_TARGET_DIR/release/driftless"
RUNS="${RUNS:-10}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Fixture image: static busybox in an empty image.
img=driftless-bench/busybox:1
if ! docker image inspect "$img" >/dev/null 2>&1; then
  mkdir -p "$work/img"
  cp /bin/busybox "$work/img/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n' > "$work/img/Dockerfile"
  docker build -q -t "$img" "$work/img" >/dev/null
fi

services="traefik frontend api-gateway ai-engine self-healing postgres redis mongodb prometheus alertmanager grafana elasticsearch logstash kibana"
stack() { # $1 = project name
  echo "name: $1"
  echo "services:"
  for s in $services; do
    cat <<YAML
  $s:
    image: $img
    command: [httpd, -f, -p, "8080"]
    environment:
      SERVICE: $s
    deploy:
      resources:
        limits: {cpus: "0.25", memory: 64M}
    restart: unless-stopped
YAML
  done
}

# The driftless repo (committed: apply refuses a dirty work tree).
repo="$work/repo"
mkdir -p "$repo/compose" "$repo/environments"
cat > "$repo/driftless.yaml" <<YAML
apiVersion: driftless/v1
targets:
  local:
    docker: {}
environments:
  bench:
    targets: [local]
    health: {deadline: 60s, settle: 0s}
YAML
echo "{}" > "$repo/environments/bench.yaml"
stack bench-dl > "$repo/compose/stack.yaml"
git -C "$repo" -c init.defaultBranch=main init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=bench -c user.email=bench@localhost commit -qm stack

# The same stack for the Compose CLI, as its own project.
stack bench-dc | sed 1d > "$work/docker-compose.yml"

teardown_dl="docker ps -aq --filter label=com.docker.compose.project=bench-dl | xargs -r docker rm -f >/dev/null; docker network rm bench-dl_default >/dev/null 2>&1 || true"
teardown_dc="docker-compose -p bench-dc -f $work/docker-compose.yml down -t 0 >/dev/null 2>&1"
trap 'bash -c "$teardown_dl"; bash -c "$teardown_dc"; rm -rf "$work"' EXIT

echo "engine: $(docker version --format '{{.Server.Version}}'), compose: $(docker-compose version --short), driftless: $($DL --version)"

hyperfine --runs "$RUNS" --export-markdown "$work/cold.md" \
  --prepare "$teardown_dl" -n "driftless reconcile (cold)" "$DL reconcile --repo $repo --env bench" \
  --prepare "$teardown_dc" -n "docker-compose up -d (cold)" "docker-compose -p bench-dc -f $work/docker-compose.yml up -d"

"$DL" reconcile --repo "$repo" --env bench >/dev/null
docker-compose -p bench-dc -f "$work/docker-compose.yml" up -d >/dev/null 2>&1
hyperfine --warmup 1 --runs "$RUNS" --export-markdown "$work/noop.md" \
  -n "driftless reconcile --dry-run (no-op)" "$DL reconcile --repo $repo --env bench --dry-run" \
  -n "driftless reconcile (no-op)" "$DL reconcile --repo $repo --env bench" \
  -n "docker-compose up -d (no-op)" "docker-compose -p bench-dc -f $work/docker-compose.yml up -d"

cat "$work/cold.md" "$work/noop.md"
