"""Attack policies are found by name; a bad `roles.attack` fails at start naming the key."""

from __future__ import annotations

import pytest
import torch

from attacks.logit_scaling import scale_last_layer
from attacks.registry import check_run_roles, known_policies, policy
from core.config import ConfigError, RunConfig
from core.models import InputSpec, build_model

SPEC = InputSpec(1, 16, 16, 4, (0.5,), (0.25,))


def test_unknown_attack_fails_at_start_naming_key_value_and_allowed() -> None:
    cfg = RunConfig.from_flat({"roles.attack": "evil", "roles.malicious-fraction": 0.2})
    with pytest.raises(ConfigError, match=r"'roles\.attack' = 'evil'.*logit-scaling"):
        check_run_roles(cfg)
    check_run_roles(RunConfig.from_flat({"roles.attack": "logit-scaling"}))
    with pytest.raises(ConfigError, match="unknown attack policy"):
        policy("evil")
    assert "logit-scaling" in known_policies()


def test_logit_scaling_keeps_predictions_and_scales_logits() -> None:
    model = build_model("conv-small", SPEC, seed=0).eval()
    x = torch.rand(16, 1, 16, 16)
    before = model(x).detach()
    after = scale_last_layer(model, 100.0)(x).detach()
    torch.testing.assert_close(after, 100 * before, rtol=1e-5, atol=1e-5)
    assert torch.equal(after.argmax(1), before.argmax(1))
