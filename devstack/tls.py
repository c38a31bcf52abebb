"""The secured local stack's credentials: a certificate authority made for the stack, a server certificate
for 127.0.0.1 and localhost signed by it, and random passwords, each in a file readable by its owner only.

Clients verify the servers against ``ca.crt`` (Kafka's SSL hostname check, libpq's ``sslmode=verify-full``).
No password is ever passed on a command line: the servers read them from files, clients from the
environment (``password_env``, ``sasl_password_env``) or from libpq's ``passfile``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KAFKA_PASSWORD_ENV = "PGFANOUT_KAFKA_PASSWORD"
PG_PASSWORD_ENV = "PGFANOUT_PG_PASSWORD"
KAFKA_USER = "pgfanout"  # the SCRAM-SHA-512 user of the stack's brokers (broker-to-broker and clients alike)
VALID_DAYS = 825


@dataclass(frozen=True)
class Credentials:
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def certificate(self) -> Path:
        return self.directory / "server.crt"

    @property
    def key(self) -> Path:
        return self.directory / "server.key"

    @property
    def kafka_password_file(self) -> Path:
        return self.directory / "kafka.password"

    @property
    def postgres_password_file(self) -> Path:
        return self.directory / "postgres.password"

    @property
    def pgpass(self) -> Path:
        return self.directory / "pgpass"

    def kafka_password(self) -> str:
        return self.kafka_password_file.read_text().strip()

    def postgres_password(self) -> str:
        return self.postgres_password_file.read_text().strip()

    def environment(self) -> dict[str, str]:
        """The variables the stack's configurations name (``password_env``, ``sasl_password_env``)."""
        return {KAFKA_PASSWORD_ENV: self.kafka_password(), PG_PASSWORD_ENV: self.postgres_password()}


def ensure(directory: Path) -> Credentials:
    """The stack's credentials, made on first use."""
    made = Credentials(directory)
    if made.ca.exists() and made.key.exists() and made.pgpass.exists():
        return made
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)  # the server's user reads its key here; the private files are 0600
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pgfanout local stack CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write_file(made.ca, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    write_file(made.certificate, server.public_bytes(serialization.Encoding.PEM), 0o644)
    write_file(
        made.key,
        server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        0o600,
    )
    # URL-safe letters only: the passwords go into a JAAS line and a pgpass line unescaped
    write_file(made.kafka_password_file, secrets.token_urlsafe(24).encode())
    write_file(made.postgres_password_file, secrets.token_urlsafe(24).encode())
    write_file(made.pgpass, f"127.0.0.1:*:*:postgres:{made.postgres_password()}\n".encode())
    return made


def write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file whose mode (private unless said) is set before anything is in it, replacing it whole."""
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    os.chmod(partial, mode)
    partial.rename(path)
