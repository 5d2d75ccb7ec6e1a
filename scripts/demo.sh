#!/usr/bin/env bash
# The README's demo: a 10-client MNIST simulation (`certfl simulate`, a real `flwr run`), PGD
# adversarial training, median aggregation, the certification gate, and half the clients
# colluding: from round 3, whenever at least 3 of them are among the 5 sampled, they all send one
# defensively distilled model. One line per round. Extra arguments go to `certfl simulate`; a
# `--run-config "k=v ..."` there is merged with the demo's own key by key (none is lost), and
# every process the demo starts (Flower's SuperLink, SuperExec, simulation) is stopped at the end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
export CERTFL_TORCH_THREADS=${CERTFL_TORCH_THREADS:-1}  # 5 ClientApps share the cores
# 5 ClientApps run at once (--concurrent): colluders wait for each other in a round
exec certfl simulate . --supernodes 10 --concurrent 5 \
  --run-config "data.dir='$CERTFL_DATA' output-dir='$PWD/runs' roles.malicious-fraction=0.5" "$@"
