"""A small local CA for the broker's TLS listeners: ``chargeline pki …``.

Files live in one directory (default ``{data_dir}/pki``)::

    ca.pem, ca.key                 the CA (key mode 0600; keep it off the broker if you can)
    server.pem, server.key         the broker's certificate, for the names it is reached by
    clients/{name}.pem, .key       one per controller or service; CN = the identity's name

Keys are ECDSA P-256. The broker's mTLS listener accepts certificates from this CA only;
the identity's row in the registry must exist and be unrevoked (revocation is the
registry's, not a CRL's), so a stolen certificate is shut out by ``broker credentials
revoke NAME``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from schemas.errors import Refused

CA_DAYS = 3650
SERVER_DAYS = 825
CLIENT_DAYS = 825


class PkiError(Refused):
    """A PKI request that cannot be done; the message says why."""

    exit_code = 2


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path

    @property
    def sha256(self) -> bytes:
        """The certificate's fingerprint: SHA-256 of its DER form (what the broker binds)."""
        pem = x509.load_pem_x509_certificate(self.cert.read_bytes())
        return pem.fingerprint(hashes.SHA256())


class LocalCA:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.cert_path = directory / "ca.pem"
        self.key_path = directory / "ca.key"

    def exists(self) -> bool:
        return self.cert_path.exists()

    def init(self, *, name: str = "chargeline local CA", now: dt.datetime | None = None) -> Issued:
        if self.exists():
            raise PkiError(f"a CA already exists in {self.dir}; refusing to replace it")
        now = now or _now()
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            _builder(subject, subject, key.public_key(), now, CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return _write(self.cert_path, self.key_path, cert, key)

    def issue_server(self, hosts: list[str], *, days: int = SERVER_DAYS) -> Issued:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(
            file_stem="server",
            common_name=hosts[0],
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            names=names,
            days=days,
            directory=self.dir,
        )

    def issue_client(
        self, name: str, *, days: int = CLIENT_DAYS, now: dt.datetime | None = None
    ) -> Issued:
        return self._issue(
            file_stem=name,
            common_name=name,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            names=[],
            days=days,
            directory=self.dir / "clients",
            now=now,
        )

    def _issue(
        self,
        *,
        file_stem: str,
        common_name: str,
        usage: x509.ObjectIdentifier,
        names: list[x509.GeneralName],
        days: int,
        directory: Path,
        now: dt.datetime | None = None,
    ) -> Issued:
        ca_cert, ca_key = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            _builder(subject, ca_cert.subject, key.public_key(), now or _now(), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        directory.mkdir(parents=True, exist_ok=True)
        return _write(directory / f"{file_stem}.pem", directory / f"{file_stem}.key", cert, key)

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not self.exists():
            raise PkiError(f"no CA in {self.dir}: run `chargeline pki init` first")
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.key_path} is not an EC key")
        return cert, key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _write(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Issued:
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_bytes)
    return Issued(cert_path, key_path)
