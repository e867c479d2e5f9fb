"""TLS certificates and SuperNode keys for one deployment run, made by the study's own code (``cryptography``).

Every run gets fresh credentials, written to its private work folder (mode 0700, each file 0600) and removed with it:

- a certificate authority (EC P-256, self-signed, valid for ``valid_hours``) that only this run trusts;
- the SuperLink's certificate, signed by that CA, naming exactly the addresses the SuperLink listens on (IP
  addresses as ``iPAddress`` subject alternative names, anything else as ``dNSName``), for server authentication only;
- one EC P-384 key pair per SuperNode, the private key in OpenSSH format (what ``flower-supernode
  --auth-supernode-private-key`` reads) and the public key as an OpenSSH line (what ``flwr supernode register``
  reads). The SuperLink runs with ``--enable-supernode-auth``, so only SuperNodes whose public key was registered
  may connect.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Credentials", "certificate_authority", "server_certificate", "supernode_key_pair", "write_credentials"]


@dataclass(frozen=True)
class Credentials:
    """Paths of one run's credential files (PEM unless stated)."""

    ca_certificate: Path
    server_certificate: Path
    server_key: Path
    supernode_private_keys: tuple[Path, ...]  # OpenSSH private keys, one per SuperNode
    supernode_public_keys: tuple[Path, ...]  # OpenSSH public-key lines, one per SuperNode


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedpeft deployment run"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(valid_hours: float) -> tuple[dt.datetime, dt.datetime]:
    if not valid_hours > 0:
        raise ValueError(f"valid_hours = {valid_hours!r} is not allowed; it must be > 0 hours")
    now = dt.datetime.now(dt.timezone.utc)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(hours=valid_hours)  # 5 min of slack for clock skew


def certificate_authority(common_name: str = "fedpeft run CA", valid_hours: float = 48.0) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA (EC P-256) that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(valid_hours)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def server_certificate(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, addresses: Sequence[str],
                       valid_hours: float = 48.0) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The SuperLink's certificate (EC P-256), signed by the CA, valid for exactly ``addresses`` (IPs or host names)."""
    if not addresses:
        raise ValueError("addresses = [] is not allowed; give every address the SuperLink listens on")
    names: list[x509.GeneralName] = []
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(valid_hours)
    cert = (x509.CertificateBuilder().subject_name(_name(str(addresses[0]))).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def supernode_key_pair() -> tuple[bytes, bytes]:
    """One SuperNode's EC P-384 key pair: (OpenSSH private key, OpenSSH public-key line), as bytes."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def _write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def write_credentials(folder: Path, addresses: Sequence[str], supernodes: int, valid_hours: float = 48.0) -> Credentials:
    """Make a CA, the SuperLink's certificate for ``addresses`` and ``supernodes`` SuperNode key pairs, and write
    them into ``folder`` (made with mode 0700; every file 0600)."""
    if supernodes < 0:
        raise ValueError(f"supernodes = {supernodes} is not allowed; it must be >= 0")
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca_cert = certificate_authority(valid_hours=valid_hours)
    key, cert = server_certificate(ca_key, ca_cert, addresses, valid_hours)
    pem = serialization.Encoding.PEM
    private_paths, public_paths = [], []
    for i in range(supernodes):
        private, public = supernode_key_pair()
        private_paths.append(_write_private(folder / f"supernode-{i}.key", private))
        public_paths.append(_write_private(folder / f"supernode-{i}.pub", public))
    return Credentials(ca_certificate=_write_private(folder / "ca.pem", ca_cert.public_bytes(pem)),
                       server_certificate=_write_private(folder / "superlink.pem", cert.public_bytes(pem)),
                       server_key=_write_private(folder / "superlink.key", _pem_key(key)),
                       supernode_private_keys=tuple(private_paths), supernode_public_keys=tuple(public_paths))
