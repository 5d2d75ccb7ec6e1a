"""The names of what the server and the clients exchange in a training round: the keys of the
Flower `RecordDict` in each message and of the entries inside its records. The server's
strategy (strategies/robust.py) writes the instruction and reads the replies; the ClientApp
(client/app.py) reads the instruction and writes its reply; both take the names from here.

Server -> client (a `train` message):
    ARRAYS        the ArrayRecord of the global model, the full state_dict
    CONFIG        a ConfigRecord holding SERVER_ROUND
    SERVER_ROUND  the round number (int), in the CONFIG record

Client -> server (the reply):
    ARRAYS        the ArrayRecord of the client's model after its round, the full state_dict
    METRICS       a MetricRecord: NUM_EXAMPLES and the client's own metrics (train-loss, ...)
    NUM_EXAMPLES  the client's training examples, in the METRICS record; reported by the client,
                  so untrusted (strategies/replies.py checks it, `agg.weight-cap` caps it)
"""

from __future__ import annotations

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SERVER_ROUND = "server-round"
NUM_EXAMPLES = "num-examples"
