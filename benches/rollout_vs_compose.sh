#!/usr/bin/env bash
# Failed requests during an image change of a 2-replica HTTP service, on
# this machine's Docker engine, in one run:
#   start-first   driftless reconcile (the default for a stateless service)
#   stop-first    driftless reconcile with deploy.update_config.order: stop-first
#   compose       docker-compose 1.29.2 `up -d` of the same change
#
#   benches/rollout_vs_compose.sh         # needs: docker, docker-compose, git, busybox-static
#   ROUNDS=5 MODES="start-first compose" BOUND=5 benches/rollout_vs_compose.sh
#
# The service is busybox httpd in a `FROM scratch` image answering its image
# variant; a client container on the project network requests the service
# name about 20 times a second (each request bounded to $BOUND s, default 1,
# so a hung one counts as failed). Each round deploys v1, waits for 20 answers, changes
# the image to v2, applies, waits for 20 more answers, and counts the
# failures from the change on. Debug build (the count does not depend on it).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in docker docker-compose git; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install docker-compose git)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "missing /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
cargo build --locked --quiet
DL="$CARGO_TARGET_DIR/debug/driftless"
ROUNDS="${ROUNDS:-3}"
MODES="${MODES:-start-first stop-first compose}"
# Each request's bound, in seconds.
BOUND="${BOUND:-1}"

work=$(mktemp -d)
teardown() { # $1 = project
  docker ps -aq --filter "label=com.docker.compose.project=$1" | xargs -r docker rm -f >/dev/null
  docker network rm "$1_default" >/dev/null 2>&1 || true
}
trap 'teardown bench-sf; teardown bench-stf; teardown bench-dc; rm -rf "$work"' EXIT

# Two images that differ only in /variant.
for v in 1 2; do
  img=driftless-bench/web:$v
  if ! docker image inspect "$img" >/dev/null 2>&1; then
    mkdir -p "$work/img$v"
    cp /bin/busybox "$work/img$v/busybox"
    echo "$v" > "$work/img$v/variant"
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY variant /variant\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n' > "$work/img$v/Dockerfile"
    docker build -q -t "$img" "$work/img$v" >/dev/null
  fi
done

stack() { # $1 = project, $2 = image variant, $3 = extra deploy keys
  cat <<YAML
name: $1
services:
  web:
    image: driftless-bench/web:$2
    command: [httpd, -f, -p, "80", -h, /]
    deploy: {replicas: 2$3}
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1/variant"]
      interval: 1s
      retries: 30
  client:
    image: driftless-bench/web:1
    command:
      - sh
      - -c
      - 'i=0; while [ \$\$i -lt 6000 ]; do if v=\$\$(timeout $BOUND wget -q -O- http://web/variant); then echo "ok \$\$v"; else echo FAIL; fi; i=\$\$((i+1)); sleep 0.05; done'
    depends_on:
      web: {condition: service_healthy}
    stop_grace_period: 1s
YAML
}

repo_for() { # $1 = project, $2 = extra deploy keys
  local repo="$work/$1"
  mkdir -p "$repo/compose" "$repo/environments"
  cat > "$repo/driftless.yaml" <<YAML
apiVersion: driftless/v1
targets:
  local:
    docker: {}
environments:
  $1:
    values: environments/values.yaml
    targets: [local]
    health: {deadline: 60s, settle: 1s}
YAML
  echo "{}" > "$repo/environments/values.yaml"
  stack "$1" 1 "$2" > "$repo/compose/stack.yaml"
  git -C "$repo" -c init.defaultBranch=main init -q
  git -C "$repo" add -A
  git -C "$repo" -c user.name=bench -c user.email=bench@localhost commit -qm v1
}

client() { # $1 = project: the client container (docker-compose 1.x names it p_client_1)
  docker ps -q --filter "label=com.docker.compose.project=$1" --filter label=com.docker.compose.service=client
}
lines() { docker logs "$(client "$1")" 2>/dev/null | wc -l; }
wait_lines() { # $1 = project, $2 = count
  until [ "$(lines "$1")" -ge "$2" ]; do sleep 0.1; done
}

# One round of mode $1 on project $2; prints the failed requests.
round() {
  local mode=$1 p=$2 state="$work/state-$2" extra=""
  [ "$mode" = stop-first ] && extra=', update_config: {order: stop-first}'
  case $mode in
    compose)
      stack "$p" 1 "" | sed 1d > "$work/$p.yml"
      docker-compose -p "$p" -f "$work/$p.yml" up -d >/dev/null 2>&1 ;;
    *)
      rm -rf "${work:?}/$p"; repo_for "$p" "$extra"
      "$DL" reconcile --env "$p" --repo "$work/$p" --state-dir "$state" >/dev/null ;;
  esac
  wait_lines "$p" 20
  local from; from=$(lines "$p")
  case $mode in
    compose)
      stack "$p" 2 "" | sed 1d > "$work/$p.yml"
      docker-compose -p "$p" -f "$work/$p.yml" up -d >/dev/null 2>&1 ;;
    *)
      stack "$p" 2 "$extra" > "$work/$p/compose/stack.yaml"
      git -C "$work/$p" -c user.name=bench -c user.email=bench@localhost commit -qam v2
      "$DL" reconcile --env "$p" --repo "$work/$p" --state-dir "$state" >/dev/null ;;
  esac
  local to; to=$(lines "$p")
  wait_lines "$p" $((to + 20))
  docker logs "$(client "$p")" 2>/dev/null | tail -n +"$((from + 1))" | grep -c FAIL || true
  teardown "$p"
}

printf '%-12s %s\n' mode "failed requests per round (of ~20/s during the change)"
for mode in $MODES; do
  case $mode in start-first) p=bench-sf ;; stop-first) p=bench-stf ;; compose) p=bench-dc ;; esac
  counts=()
  for _ in $(seq "$ROUNDS"); do counts+=("$(round "$mode" "$p")"); done
  printf '%-12s %s\n' "$mode" "${counts[*]}"
done
