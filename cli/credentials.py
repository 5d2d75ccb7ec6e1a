"""`certfl credentials`: the files a TLS deployment with SuperNode authentication needs.

Flower 1.36 ships no tool for them. One directory holds

    ca.crt, ca.key                 a private certificate authority (EC P-256, self-signed)
    superlink.crt, superlink.key   the SuperLink's certificate, signed by the CA; its subject
                                   alternative names list every address SuperNodes and the
                                   `flwr` CLI dial (IP addresses and DNS names)
    supernodes/<name>.key, .pub    one EC P-384 key pair per SuperNode in OpenSSH format, what
                                   `flower-supernode --auth-supernode-private-key` reads and
                                   `flwr supernode register <name>.pub` registers

Private keys are written with mode 0600. Existing files are reused, never overwritten, unless
`--force`: adding SuperNodes to a federation adds key pairs and keeps the CA. A SuperLink
certificate that lacks a requested address is an error (it would fail every TLS handshake on
that address), not silently replaced.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Addresses every SuperLink certificate names: the same machine, and the compose service name.
DEFAULT_SANS = ("localhost", "127.0.0.1", "::1", "superlink")
NODE_KEY_CURVE = ec.SECP384R1  # Flower accepts any NIST curve; P-384 is what it generates itself
VALID_DAYS = 365


@dataclass(frozen=True)
class CredentialPaths:
    """Where each credential lives inside one credentials directory.

    Parameters
    ----------
    root : the credentials directory.
    """

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def superlink_cert(self) -> Path:
        return self.root / "superlink.crt"

    @property
    def superlink_key(self) -> Path:
        return self.root / "superlink.key"

    def node_key(self, name: str) -> Path:
        """The SuperNode `name`'s private key (OpenSSH format)."""
        return self.root / "supernodes" / f"{name}.key"

    def node_public_key(self, name: str) -> Path:
        """The SuperNode `name`'s public key (OpenSSH format), the one to register."""
        return self.root / "supernodes" / f"{name}.pub"


def parse_san(value: str) -> x509.GeneralName:
    """One subject alternative name: an IP address if `value` parses as one, else a DNS name.

    >>> parse_san("10.0.0.1")
    <IPAddress(value=10.0.0.1)>
    >>> parse_san("superlink.example.org")
    <DNSName(value='superlink.example.org')>
    """
    value = value.strip()
    if not value:
        raise ValueError("an empty subject alternative name")
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def certificate_sans(cert: x509.Certificate) -> set[str]:
    """The subject alternative names of `cert` as strings (IP addresses and DNS names)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in ext.get_values_for_type(x509.IPAddress)} | set(
        ext.get_values_for_type(x509.DNSName)
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certfl"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    # an hour of slack for machines whose clocks run a little behind this one's
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=days)
    )


def make_ca(
    common_name: str = "certfl CA", days: int = VALID_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh self-signed certificate authority: its key and certificate.

    Parameters
    ----------
    common_name : the CA's subject common name.
    days : validity in days.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    return key, _validity(builder, days).sign(key, hashes.SHA256())


def make_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: Sequence[str],
    common_name: str = "superlink",
    days: int = VALID_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A SuperLink key and certificate signed by the CA, valid for every name in `sans`.

    Parameters
    ----------
    ca_key, ca_cert : the signing CA.
    sans : the addresses clients dial (IP addresses or DNS names); at least one.
    common_name : the subject common name (clients check the SANs, not this).
    days : validity in days.
    """
    if not sans:
        raise ValueError("a SuperLink certificate needs at least one subject alternative name")
    names = list(dict.fromkeys(parse_san(s) for s in sans))
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    return key, _validity(builder, days).sign(ca_key, hashes.SHA256())


def make_node_key() -> tuple[bytes, bytes]:
    """A SuperNode's authentication key pair: (private, public), both in OpenSSH format."""
    key = ec.generate_private_key(NODE_KEY_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write `data` to `path` atomically; private files are created with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def ensure_credentials(
    root: Path,
    sans: Iterable[str] = DEFAULT_SANS,
    node_names: Iterable[str] = (),
    force: bool = False,
) -> tuple[CredentialPaths, list[Path]]:
    """Make whatever is missing in `root`: the CA, the SuperLink certificate, node key pairs.

    Parameters
    ----------
    root : the credentials directory (created if needed).
    sans : the addresses the SuperLink certificate must name.
    node_names : SuperNodes that need a key pair.
    force : regenerate everything, even files that exist.

    Returns the paths and the list of files written. Raises ValueError when an existing
    SuperLink certificate lacks a requested address, or was not signed by the existing CA.
    """
    paths = CredentialPaths(Path(root))
    sans = list(dict.fromkeys(s.strip() for s in sans if s.strip()))
    written: list[Path] = []
    if force or not (paths.ca_cert.is_file() and paths.ca_key.is_file()):
        ca_key, ca_cert = make_ca()
        _write(paths.ca_key, _pem_key(ca_key), private=True)
        _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
        written += [paths.ca_key, paths.ca_cert]
        force = True  # a new CA invalidates the old SuperLink certificate
    else:
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    if force or not (paths.superlink_cert.is_file() and paths.superlink_key.is_file()):
        key, cert = make_server_certificate(ca_key, ca_cert, sans)
        _write(paths.superlink_key, _pem_key(key), private=True)
        _write(paths.superlink_cert, cert.public_bytes(serialization.Encoding.PEM), False)
        written += [paths.superlink_key, paths.superlink_cert]
    else:
        cert = x509.load_pem_x509_certificate(paths.superlink_cert.read_bytes())
        missing = [s for s in sans if str(parse_san(s).value) not in certificate_sans(cert)]
        if missing:
            raise ValueError(
                f"{paths.superlink_cert} does not name {', '.join(missing)} (it names "
                f"{', '.join(sorted(certificate_sans(cert)))}): SuperNodes dialling those "
                "addresses would fail the TLS handshake; delete it (and superlink.key) to make "
                "a new one signed by the same CA, or pass --force to renew everything"
            )
        if cert.issuer != ca_cert.subject:
            raise ValueError(f"{paths.superlink_cert} was not issued by {paths.ca_cert}")
    for name in node_names:
        if force or not paths.node_key(name).is_file():
            private, public = make_node_key()
            _write(paths.node_key(name), private, private=True)
            _write(paths.node_public_key(name), public, private=False)
            written += [paths.node_key(name), paths.node_public_key(name)]
    return paths, written


def node_names(count: int, prefix: str = "supernode") -> list[str]:
    """The names `certfl launch` and the compose files give SuperNodes: supernode-0, -1, ...

    >>> node_names(2)
    ['supernode-0', 'supernode-1']
    """
    return [f"{prefix}-{i}" for i in range(count)]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `certfl credentials`."""
    p = subparsers.add_parser(
        "credentials",
        help="make a CA, a SuperLink TLS certificate and SuperNode auth key pairs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("directory", help="where the credentials are written")
    p.add_argument(
        "--san", action="append", default=[],
        help="an address SuperNodes or the flwr CLI dial (IP or DNS name; repeatable); "
        f"always added: {', '.join(DEFAULT_SANS)}",
    )  # fmt: skip
    p.add_argument(
        "-n", "--supernodes", type=int, default=0,
        help="make key pairs for supernode-0 .. supernode-(N-1)",
    )  # fmt: skip
    p.add_argument(
        "--node", action="append", default=[], help="make a key pair named NODE (repeatable)"
    )
    p.add_argument("--force", action="store_true", help="regenerate every file")


def run(args: argparse.Namespace) -> int:
    """Make the missing credentials and list what was written."""
    if args.supernodes < 0:
        raise SystemExit(f"--supernodes = {args.supernodes}: must be >= 0")
    try:
        for san in args.san:
            parse_san(san)
        paths, written = ensure_credentials(
            Path(args.directory),
            [*DEFAULT_SANS, *args.san],
            [*node_names(args.supernodes), *args.node],
            force=args.force,
        )
    except ValueError as err:
        raise SystemExit(f"certfl credentials: {err}") from None
    cert = x509.load_pem_x509_certificate(paths.superlink_cert.read_bytes())
    for path in written:
        print(f"wrote {path}")
    print(f"SuperLink certificate names: {', '.join(sorted(certificate_sans(cert)))}")
    print(f"register a SuperNode with: flwr supernode register {paths.node_public_key('NAME')}")
    return 0
