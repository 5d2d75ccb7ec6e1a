"""`certfl credentials`: a CA, a SuperLink certificate naming the dialled addresses, and SuperNode
keys that Flower's own loaders accept; TLS handshakes with them, and the guard's TLS probe."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

from cli.credentials import DEFAULT_SANS, certificate_sans, ensure_credentials
from cli.main import main
from cli.supernode_guard import NodeArgs, probe_tls


def test_files_chain_to_the_ca_name_the_addresses_and_keep_private_keys_private(
    tmp_path: Path,
) -> None:
    paths, written = ensure_credentials(
        tmp_path, [*DEFAULT_SANS, "10.1.2.3", "link.example"], ["supernode-0"]
    )
    assert len(written) == 6
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(paths.superlink_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert certificate_sans(cert) == {"localhost", "127.0.0.1", "::1", "superlink", "10.1.2.3",
                                      "link.example"}  # fmt: skip
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for private in (paths.ca_key, paths.superlink_key, paths.node_key("supernode-0")):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private


def test_node_keys_are_what_flower_loads(tmp_path: Path) -> None:
    paths, _ = ensure_credentials(tmp_path, DEFAULT_SANS, ["supernode-0", "supernode-1"])
    for name in ("supernode-0", "supernode-1"):
        key = load_ssh_private_key(paths.node_key(name).read_bytes(), None)  # as flower-supernode
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert uses_nist_ec_curve(key.public_key())
        assert try_load_public_key(paths.node_public_key(name))  # as `flwr supernode register`
    assert paths.node_public_key("supernode-0").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert (
        paths.node_public_key("supernode-0").read_text()
        != paths.node_public_key("supernode-1").read_text()
    )


def test_existing_files_are_reused_and_new_nodes_added(tmp_path: Path) -> None:
    paths, first = ensure_credentials(tmp_path, DEFAULT_SANS, ["supernode-0"])
    ca_before = paths.ca_cert.read_bytes()
    _, again = ensure_credentials(tmp_path, DEFAULT_SANS, ["supernode-0"])
    assert again == []
    _, added = ensure_credentials(tmp_path, DEFAULT_SANS, ["supernode-0", "supernode-1"])
    assert added == [paths.node_key("supernode-1"), paths.node_public_key("supernode-1")]
    assert paths.ca_cert.read_bytes() == ca_before


def test_a_certificate_lacking_a_requested_address_is_an_error(tmp_path: Path) -> None:
    ensure_credentials(tmp_path, DEFAULT_SANS)
    with pytest.raises(ValueError, match=r"does not name 10\.9\.9\.9"):
        ensure_credentials(tmp_path, [*DEFAULT_SANS, "10.9.9.9"])
    paths, written = ensure_credentials(tmp_path, [*DEFAULT_SANS, "10.9.9.9"], force=True)
    assert paths.superlink_cert in written


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["credentials", str(tmp_path), "-n", "2", "--san", "192.0.2.7"]) == 0
    out = capsys.readouterr().out
    assert "192.0.2.7" in out and (tmp_path / "supernodes" / "supernode-1.pub").is_file()
    with pytest.raises(SystemExit, match="does not name 192.0.2.8"):
        main(["credentials", str(tmp_path), "--san", "192.0.2.8"])


@contextmanager
def tls_server(cert: Path | None, key: Path | None, host: str = "127.0.0.1") -> Iterator[int]:
    """A loopback server answering TLS handshakes with `cert` (plain TCP when None)."""
    listener = socket.create_server((host, 0))
    context = None
    if cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols(["h2"])
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                if context is not None:
                    conn = context.wrap_socket(conn, server_side=True)
                else:
                    conn.sendall(b"\x00" * 16)  # not a TLS record
            except (ssl.SSLError, OSError):
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_a_real_handshake_and_the_guard_probe_name_each_mistake(tmp_path: Path) -> None:
    paths, _ = ensure_credentials(tmp_path / "a", DEFAULT_SANS)
    other, _ = ensure_credentials(tmp_path / "b", DEFAULT_SANS)
    ca = str(paths.ca_cert)
    with tls_server(paths.superlink_cert, paths.superlink_key) as port:
        assert probe_tls(NodeArgs(f"127.0.0.1:{port}", False, ca, None)) is True
        assert probe_tls(NodeArgs(f"localhost:{port}", False, ca, None)) is True
        wrong_ca = probe_tls(NodeArgs(f"127.0.0.1:{port}", False, str(other.ca_cert), None))
        assert "not signed by the CA" in wrong_ca
        plaintext_node = probe_tls(NodeArgs(f"127.0.0.1:{port}", True, None, None))
        assert "speaks TLS" in plaintext_node
    # a certificate that names only 127.0.0.1, served and dialled at 127.0.0.2
    narrow, _ = ensure_credentials(tmp_path / "c", ["127.0.0.1"])
    with tls_server(narrow.superlink_cert, narrow.superlink_key, "127.0.0.2") as port:
        mismatch = probe_tls(NodeArgs(f"127.0.0.2:{port}", False, str(narrow.ca_cert), None))
        assert "does not name 127.0.0.2" in mismatch and "it names: 127.0.0.1" in mismatch
    with tls_server(None, None) as port:
        assert "does not speak TLS" in probe_tls(NodeArgs(f"127.0.0.1:{port}", False, ca, None))
        assert probe_tls(NodeArgs(f"127.0.0.1:{port}", True, None, None)) is True
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    assert probe_tls(NodeArgs(f"127.0.0.1:{port}", False, ca, None)) is None  # not up yet
