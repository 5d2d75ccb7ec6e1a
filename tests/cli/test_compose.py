"""`certfl compose`: the committed compose files are what the generator writes, they say what a
deployment needs (roles, colluders' channel, health checks, TLS with one key per SuperNode), and
docker-compose itself accepts them (`docker-compose config`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cli.compose import DEFAULT_ROLES, plain_compose, tls_overlay
from cli.main import main
from tests.conftest import REPO

DOCKER = REPO / "docker"


def test_committed_files_are_the_generated_ones() -> None:
    assert main(["compose", "-o", str(DOCKER), "--check"]) == 0


def test_roles_node_config_and_the_colluders_channel() -> None:
    roles = ("attack:backdoor", "benign", "attack:backdoor", "fl-wbc", "benign")
    services = plain_compose(roles)["services"]
    for i, role in enumerate(roles):
        node, app = services[f"supernode-{i}"], services[f"clientapp-{i}"]
        assert node["command"][-1] == f'partition-id={i} num-partitions=5 role="{role}"'
        assert app["network_mode"] == f"service:supernode-{i}"  # Runtime API on loopback only
        assert ("colluders:/channel" in app["volumes"]) == role.startswith("attack:")
        assert "${CERTFL_DATA:-../data}:/data:ro" in app["volumes"]
        assert app["depends_on"] == {f"supernode-{i}": {"condition": "service_healthy"}}
    link = services["superlink"]
    assert link["command"][link["command"].index("--database") + 1] == "/state/state.db"
    assert "superlink-state:/state" in link["volumes"]
    serverapp = services["serverapp"]
    assert serverapp["command"][:5] == [
        "flower-superexec", "--insecure", "--plugin-type", "serverapp", "--runtime-api-address",
    ]  # fmt: skip
    assert "${CERTFL_RUNS:-../runs}:/runs" in serverapp["volumes"]
    for name, service in services.items():
        assert service["init"] is True, name
        assert name == "runner" or "healthcheck" in service, name


def test_tls_overlay_gives_each_supernode_only_its_own_key() -> None:
    overlay = tls_overlay(DEFAULT_ROLES)["services"]
    link = overlay["superlink"]["command"]
    assert "--enable-supernode-auth" in link and "--insecure" not in link
    register = overlay["register"]["command"]
    assert register[:5] == ["python", "-m", "cli.register_keys", "--superlink", "docker"]
    for i in range(len(DEFAULT_ROLES)):
        node = overlay[f"supernode-{i}"]
        key = f"/credentials/supernodes/supernode-{i}.key"
        assert node["command"][node["command"].index("--auth-supernode-private-key") + 1] == key
        mount = f"./credentials/supernodes/supernode-{i}.key:{key}:ro"
        assert [v for v in node["volumes"] if ".key" in v] == [mount]
        assert node["depends_on"] == {"register": {"condition": "service_completed_successfully"}}
        assert f"/credentials/supernodes/supernode-{i}.pub" in register


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it with apt-get as root)")
    return found


@pytest.mark.parametrize("overlay", [False, True], ids=["plain", "tls"])
def test_docker_compose_accepts_the_committed_files(overlay: bool) -> None:
    files = ["-f", str(DOCKER / "compose.yml")]
    if overlay:
        files += ["-f", str(DOCKER / "compose.tls.yml")]
    proc = subprocess.run(
        [_docker_compose(), "--project-directory", str(DOCKER), *files, "config"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    merged = yaml.safe_load(proc.stdout)["services"]
    assert {f"supernode-{i}" for i in range(4)} <= set(merged)
    if overlay:
        assert merged["supernode-0"]["depends_on"] == {
            "register": {"condition": "service_completed_successfully"},
            "superlink": {"condition": "service_healthy"},
        }


def test_docker_compose_accepts_eight_generated_supernodes(tmp_path: Path) -> None:
    roles = "attack:alie,attack:alie,attack:alie,fl-wbc"
    assert main(["compose", "-n", "8", "--roles", roles, "-o", str(tmp_path)]) == 0
    proc = subprocess.run(
        [_docker_compose(), "--project-directory", str(DOCKER), "-f",
         str(tmp_path / "compose.yml"), "-f", str(tmp_path / "compose.tls.yml"), "config"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert sum(name.startswith("supernode-") for name in services) == 8
    assert services["supernode-7"]["command"][-1] == (
        'partition-id=7 num-partitions=8 role="benign"'
    )


@pytest.mark.parametrize(
    ("n", "roles", "message"),
    [
        (8, ",".join(["benign"] * 9), "9 roles for 8"),
        (2, "attack:no-such-policy", "no attack policy 'no-such-policy' is registered"),
        (0, "", "--supernodes = 0: must be >= 1"),
    ],
)
def test_a_bad_count_or_role_writes_nothing_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], n: int, roles: str, message: str
) -> None:
    assert main(["compose", "-n", str(n), "--roles", roles, "-o", str(tmp_path)]) == 2
    assert message in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
