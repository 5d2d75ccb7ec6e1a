#!/usr/bin/env bash
# The README's demo: a 20-client MNIST simulation (`flwr run`), PGD adversarial training,
# median aggregation, one line per round. Extra arguments are passed to `flwr run`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
export FLWR_HOME=${FLWR_HOME:-$PWD/.flwr}
exec flwr run . --stream \
  --federation-config "num-supernodes=20" \
  --run-config "data.dir='$CERTFL_DATA' output-dir='$PWD/runs'" "$@"
