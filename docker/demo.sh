#!/usr/bin/env bash
# The compose demo: build the image, start a SuperLink, the ServerApp's SuperExec and N SuperNodes
# with their ClientApp SuperExecs in containers, submit a run, stream its per-round lines, leave
# the run directory on the host, and tear everything down (also on Ctrl-C or failure).
#
#   docker/demo.sh [--tls] [-n N] [--roles R] [--rounds K] [--no-build] [--keep] [-- RUN-CONFIG...]
#
#   --tls        TLS + SuperNode authentication (compose.tls.yml; credentials in docker/credentials)
#   -n, --roles  SuperNodes and their roles (default: compose.yml as committed, 4 SuperNodes, the
#                first two colluding with `distillation`); other values write the compose files
#                to a scratch directory with `certfl compose` (run inside the image)
#   --rounds K   rounds of the run (default 4; the colluders attack from round 3, the gate is on)
#   --no-build   use the image as it is;  --keep: leave the deployment running
#   RUN-CONFIG   more run config overrides, as for `flwr run --run-config`
#
# Environment: CERTFL_IMAGE (certfl:latest), CERTFL_DATA (the data directory; default
# ../shared/data if it exists, else ./data), CERTFL_RUNS (./runs), DOCKER_COMPOSE (docker-compose,
# or "docker compose").
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
tls=0 n="" roles="" rounds=4 build=1 keep=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tls) tls=1 ;;
    -n|--supernodes) n=$2; shift ;;
    --roles) roles=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --no-build) build=0 ;;
    --keep) keep=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "demo.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done

export CERTFL_IMAGE=${CERTFL_IMAGE:-certfl:latest}
if [ -z "${CERTFL_DATA:-}" ]; then
  if [ -d "$repo/../shared/data" ]; then CERTFL_DATA=$(cd "$repo/../shared/data" && pwd); else CERTFL_DATA=$repo/data; fi
fi
export CERTFL_DATA CERTFL_RUNS=${CERTFL_RUNS:-$repo/runs}
export CERTFL_UID=${CERTFL_UID:-$(id -u)} CERTFL_GID=${CERTFL_GID:-$(id -g)}
mkdir -p "$CERTFL_RUNS"
read -r -a compose_cmd <<< "${DOCKER_COMPOSE:-docker-compose}"
started=$(date +%s)

if [ "$build" = 1 ]; then
  echo "[demo] building $CERTFL_IMAGE"
  docker build -t "$CERTFL_IMAGE" -f "$here/Dockerfile" "$repo"
  echo "[demo] image built in $(( $(date +%s) - started )) s: $(docker image inspect -f '{{.Size}}' "$CERTFL_IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
fi
in_image() {  # run a certfl command inside the image, as the calling user, in $1 mounted at /out
  local dir=$1; shift
  docker run --rm --user "$CERTFL_UID:$CERTFL_GID" -e HOME=/tmp -v "$dir:/out" -w /out "$CERTFL_IMAGE" "$@"
}

files="$here"
if [ -n "$n$roles" ]; then  # compose files for other SuperNodes, written by the image's certfl
  files=$(mktemp -d "${TMPDIR:-/tmp}/certfl-compose.XXXXXX")
  in_image "$files" certfl compose -n "${n:-4}" --roles "${roles:-}" -o /out >/dev/null
fi
num=$(grep -c '^  supernode-[0-9]*:$' "$files/compose.yml")
project=certfl-demo
compose=("${compose_cmd[@]}" -p "$project" --project-directory "$here" -f "$files/compose.yml")
if [ "$tls" = 1 ]; then
  mkdir -p "$here/credentials"
  in_image "$here/credentials" certfl credentials /out -n "$num" >/dev/null
  compose+=(-f "$files/compose.tls.yml")
fi

cleanup() {
  local code=$?
  trap - EXIT
  trap '' INT TERM  # a second Ctrl-C must not cut the teardown short
  if [ "$keep" = 0 ]; then
    echo "[demo] stopping the deployment"
    "${compose[@]}" down -v --remove-orphans --timeout 20 >/dev/null 2>&1 || true
  fi
  [ "$files" != "$here" ] && rm -rf "$files"
  exit "$code"
}
trap cleanup EXIT
trap 'echo "[demo] interrupted"; exit 130' INT TERM

echo "[demo] starting 1 SuperLink + $num SuperNodes ($([ "$tls" = 1 ] && echo "TLS, SuperNode auth" || echo plaintext))"
up_at=$(date +%s)
"${compose[@]}" up -d
# wait until every long-running container reports healthy
deadline=$(( $(date +%s) + 300 ))
while :; do
  states=$(docker ps -a --filter "label=com.docker.compose.project=$project" \
    --format '{{.Names}} {{.Status}}')
  if echo "$states" | grep -q "Exited ([1-9]"; then
    echo "$states" >&2; echo "[demo] a container failed; its logs:" >&2
    "${compose[@]}" logs --tail 40 >&2; exit 1
  fi
  if ! echo "$states" | grep -v "Exited (0)" | grep -qv "(healthy)"; then break; fi
  if [ "$(date +%s)" -gt "$deadline" ]; then echo "$states" >&2; echo "[demo] not healthy after 300 s" >&2; exit 1; fi
  sleep 2
done
echo "[demo] all containers healthy $(( $(date +%s) - up_at )) s after \`up\`"
run_at=$(date +%s)

run="compose-$(date -u +%Y%m%d-%H%M%S)"
overrides="num-rounds=$rounds train.clients-per-round=$num train.min-nodes=$num roles.min-colluders=2"
overrides+=" output-dir='/runs' run-name='$run' attack.channel-dir='/channel/$run'"
args=(--run-config "$overrides")
for o in "${extra[@]}"; do args+=(--run-config "$o"); done
log="$CERTFL_RUNS/.$run.flwr-run.log"
"${compose[@]}" run --rm -T --no-deps runner "${args[@]}" 2>&1 | tee "$log" \
  | grep --line-buffered -E '\[certfl\]|ERROR' || true
if [ -f "$CERTFL_RUNS/$run/done" ]; then
  echo "[demo] run directory $CERTFL_RUNS/$run: complete; the run took $(( $(date +%s) - run_at )) s, $(( $(date +%s) - started )) s in all"
else
  echo "[demo] run directory $CERTFL_RUNS/$run: INCOMPLETE; flwr output in $log" >&2
  "${compose[@]}" logs --tail 30 >&2
  exit 1
fi
