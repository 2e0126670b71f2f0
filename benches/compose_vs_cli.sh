#!/usr/bin/env bash
# Side-by-side: driftless vs the Compose CLI on the same 14-service stack of
# fixture images, three of the services built from a `build:` context, on
# this machine's Docker engine, in one run.
#
#   benches/compose_vs_cli.sh            # needs: docker, docker-compose, hyperfine, socat, busybox-static
#
# Measures (hyperfine, release build):
#   no-op:  `driftless reconcile` (plan + apply nothing + verify) and
#           `driftless reconcile --dry-run`, vs `docker-compose up -d --build`
#           and `docker-compose up -d` with nothing to do
#   cold:   deploy from nothing (built images kept), vs `docker-compose up -d`
#   build requests: one no-op of each tool through a logging socket proxy
#           (socat) on the engine socket, counting `POST /build` requests and
#           the bytes sent to the engine; a driftless no-op that sends a build
#           fails the bench
# The stack has no healthchecks and the environment a 0 s settle window, so
# driftless's verify step waits for nothing `up -d` would not wait for.
# The build contexts are `FROM scratch` + the host's static busybox + a page;
# docker-compose builds with the Engine API's classic builder, as driftless
# does (COMPOSE_DOCKER_CLI_BUILD=0, DOCKER_BUILDKIT=0).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in docker docker-compose hyperfine socat; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install docker-compose hyperfine socat)" >&2; exit 1; }
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
built="api-gateway ai-engine self-healing"
is_built() { case " $built " in *" $1 "*) return 0 ;; esac; return 1; }

# The build context of service $2 under directory $1: FROM scratch, the
# static busybox and a page of its own, so each service builds its own image.
context() {
  mkdir -p "$1/$2"
  cp /bin/busybox "$1/$2/busybox"
  echo "$2" > "$1/$2/index.html"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY index.html /www/index.html\nCMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]\n' > "$1/$2/Dockerfile"
}

stack() { # $1 = project name
  echo "name: $1"
  echo "services:"
  for s in $services; do
    echo "  $s:"
    if is_built "$s"; then
      echo "    build: ./$s"
    else
      echo "    image: $img"
      echo '    command: [httpd, -f, -p, "8080"]'
    fi
    cat <<YAML
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
for s in $built; do context "$repo/compose" "$s"; done
git -C "$repo" -c init.defaultBranch=main init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=bench -c user.email=bench@localhost commit -qm stack

# The same stack for the Compose CLI, as its own project, with its own copy
# of the contexts.
dc="$work/dc"
mkdir -p "$dc"
stack bench-dc | sed 1d > "$dc/docker-compose.yml"
for s in $built; do context "$dc" "$s"; done
export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0

built_images() { # $1 = project; the images both tools name after it
  docker image ls -q --filter "reference=$1-*" --filter "reference=$1_*" | sort -u
}
teardown_dl="docker ps -aq --filter label=com.docker.compose.project=bench-dl | xargs -r docker rm -f >/dev/null; docker network rm bench-dl_default >/dev/null 2>&1 || true"
teardown_dc="docker-compose -p bench-dc -f $dc/docker-compose.yml down -t 0 >/dev/null 2>&1"
cleanup() {
  bash -c "$teardown_dl"; bash -c "$teardown_dc"
  { built_images bench-dl; built_images bench-dc; } | xargs -r docker rmi -f >/dev/null 2>&1 || true
  [ -z "${proxy_pid:-}" ] || kill "$proxy_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "engine: $(docker version --format '{{.Server.Version}}'), compose: $(docker-compose version --short), driftless: $($DL --version)"

# First deploys build the three images (both tools), outside the timings.
"$DL" reconcile --repo "$repo" --env bench >/dev/null
docker-compose -p bench-dc -f "$dc/docker-compose.yml" up -d --build >/dev/null 2>&1

hyperfine --runs "$RUNS" --export-markdown "$work/cold.md" \
  --prepare "$teardown_dl" -n "driftless reconcile (cold)" "$DL reconcile --repo $repo --env bench" \
  --prepare "$teardown_dc" -n "docker-compose up -d (cold)" "docker-compose -p bench-dc -f $dc/docker-compose.yml up -d"

"$DL" reconcile --repo "$repo" --env bench >/dev/null
docker-compose -p bench-dc -f "$dc/docker-compose.yml" up -d >/dev/null 2>&1
hyperfine --warmup 1 --runs "$RUNS" --export-markdown "$work/noop.md" \
  -n "driftless reconcile --dry-run (no-op)" "$DL reconcile --repo $repo --env bench --dry-run" \
  -n "driftless reconcile (no-op)" "$DL reconcile --repo $repo --env bench" \
  -n "docker-compose up -d --build (no-op)" "docker-compose -p bench-dc -f $dc/docker-compose.yml up -d --build" \
  -n "docker-compose up -d (no-op)" "docker-compose -p bench-dc -f $dc/docker-compose.yml up -d"

# One no-op of each through a socket proxy that logs every byte sent to the
# engine (socat -v): the requests, the build requests among them and the
# bytes sent (request heads and bodies: a build's context tar is its body).
counted() { # $1 = label, rest = command; prints a row of the table below
  local label=$1 log="$work/proxy.log" sock="$work/proxy.sock"
  shift
  rm -f "$sock" "$log"
  socat -v "UNIX-LISTEN:$sock,fork" UNIX-CONNECT:/var/run/docker.sock 2>"$log" &
  proxy_pid=$!
  for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
  DOCKER_HOST="unix://$sock" "$@" >/dev/null 2>&1
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
  proxy_pid=
  local requests builds bytes
  requests=$({ grep -aoE '(GET|HEAD|POST|PUT|DELETE) /[^ ]* HTTP/1\.1' "$log" || true; } | wc -l)
  builds=$({ grep -aoE 'POST /v[0-9.]+/build' "$log" || true; } | wc -l)
  # A header can follow binary data on the same line: not anchored.
  bytes=$({ grep -aoE '> [0-9]{4}/[0-9]{2}/[0-9]{2} [0-9:.]+ +length=[0-9]+' "$log" || true; } | sed -E 's/.*length=//' | paste -sd+ | bc)
  echo "| $label | $requests | $builds | ${bytes:-0} |"
  LAST_BUILDS=$builds
}
{
  echo "| no-op through the proxy | API requests | POST /build requests | bytes sent to the engine |"
  echo "| --- | ---: | ---: | ---: |"
  counted "driftless reconcile" "$DL" reconcile --repo "$repo" --env bench
  dl_builds=$LAST_BUILDS
  counted "docker-compose up -d --build" docker-compose -p bench-dc -f "$dc/docker-compose.yml" up -d --build
} > "$work/builds.md"

cat "$work/cold.md" "$work/noop.md" "$work/builds.md"
if [ "$dl_builds" != 0 ]; then
  echo "driftless sent $dl_builds build requests on a no-op" >&2
  exit 1
fi
