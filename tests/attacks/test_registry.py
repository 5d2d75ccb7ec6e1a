"""Attack policies are found by name; a bad `roles.attack` or node role fails at parse time,
naming the key, the value and the registered policies."""

from __future__ import annotations

import pytest
import torch

from attacks.logit_scaling import scale_last_layer
from attacks.registry import load_policies, policy
from core.config import ConfigError, NodeConfig, RunConfig
from core.models import InputSpec, build_model

SPEC = InputSpec(1, 16, 16, 4, (0.5,), (0.25,))


def test_unknown_policies_fail_at_parse_naming_key_value_and_allowed() -> None:
    with pytest.raises(ConfigError, match=r"'roles\.attack' = 'evil'.*allowed: .*logit-scaling"):
        RunConfig.from_flat({"roles.attack": "evil", "roles.malicious-fraction": 0.2})
    assert RunConfig.from_flat({"roles.attack": "logit-scaling"}).roles.attack == "logit-scaling"
    with pytest.raises(ConfigError, match=r"'role' = 'attack:evil'.*'evil'.*allowed: .*replace"):
        NodeConfig.from_flat({"partition-id": 0, "num-partitions": 2, "role": "attack:evil"})
    node = NodeConfig.from_flat({"partition-id": 0, "num-partitions": 2, "role": "attack:alie"})
    assert node.role == "attack:alie"
    with pytest.raises(ConfigError, match="unknown policy"):
        policy("evil")
    assert "logit-scaling" in load_policies()


def test_logit_scaling_keeps_predictions_and_scales_logits() -> None:
    model = build_model("conv-small", SPEC, seed=0).eval()
    x = torch.rand(16, 1, 16, 16)
    before = model(x).detach()
    after = scale_last_layer(model, 100.0)(x).detach()
    torch.testing.assert_close(after, 100 * before, rtol=1e-5, atol=1e-5)
    assert torch.equal(after.argmax(1), before.argmax(1))
