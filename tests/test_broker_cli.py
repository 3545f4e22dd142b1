"""``chargeline broker credentials|export`` and ``chargeline pki``, as an operator runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from store.registry import import_registry
from tests.conftest import registry_for
from tests.db import query
from tests.procs import run_chargeline

pytestmark = pytest.mark.processes


def test_credentials_are_issued_once_listed_and_revoked(database: str, tmp_path: Path) -> None:
    """--missing gives each registered controller a password, printed once and stored only as
    hashes; a second run has nothing to do; revoke marks it; mistakes get a clear error."""
    import_registry(database, registry_for(["c1", "c2"], 1))
    first = run_chargeline(database, tmp_path, "broker", "credentials", "issue", "--missing")
    assert first.returncode == 0, first.stderr
    printed = dict(line.split() for line in first.stdout.splitlines()[:2])
    assert set(printed) == {"c1", "c2"}
    stored = query(database, "SELECT name, argon2, pbkdf2 FROM mqtt_identities ORDER BY name")
    assert [row[0] for row in stored] == ["c1", "c2"]
    assert all(printed[name] not in argon2 + pbkdf2 for name, argon2, pbkdf2 in stored)

    again = run_chargeline(database, tmp_path, "broker", "credentials", "issue", "--missing")
    assert "already has a credential" in again.stdout

    service = run_chargeline(database, tmp_path, "broker", "credentials", "issue", "svc_ingest")
    assert service.returncode == 0 and service.stdout.startswith("svc_ingest ")
    assert (
        run_chargeline(database, tmp_path, "broker", "credentials", "revoke", "c2").returncode == 0
    )
    listing = run_chargeline(database, tmp_path, "broker", "credentials", "list").stdout
    assert "c1" in listing and "REVOKED" in listing.split("c2", 1)[1].splitlines()[0]
    assert "ingest" in listing.split("svc_ingest", 1)[1].splitlines()[0]

    unknown = run_chargeline(database, tmp_path, "broker", "credentials", "issue", "c9")
    assert unknown.returncode == 2 and "not in the registry" in unknown.stderr
    nobody = run_chargeline(database, tmp_path, "broker", "credentials", "revoke", "nobody")
    assert nobody.returncode == 2 and "no identity named 'nobody'" in nobody.stderr


def test_pki_issues_a_ca_a_server_and_client_certificates(database: str, tmp_path: Path) -> None:
    """The CA signs the broker's and a controller's certificates (CN = controller id); keys
    are private to their owner; an unregistered controller and a second CA are refused."""
    import_registry(database, registry_for(["c1"], 1))
    pki = tmp_path / "pki"
    assert run_chargeline(database, tmp_path, "pki", "init").returncode == 0
    assert (
        run_chargeline(database, tmp_path, "pki", "server", "broker.example", "10.0.0.5").returncode
        == 0
    )
    client = run_chargeline(database, tmp_path, "pki", "client", "c1")
    assert client.returncode == 0, client.stderr
    cert = x509.load_pem_x509_certificate((pki / "clients" / "c1.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "c1"
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    server = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["broker.example"]
    for key in (pki / "ca.key", pki / "server.key", pki / "clients" / "c1.key"):
        assert key.stat().st_mode & 0o077 == 0, key
    assert query(database, "SELECT name, argon2 FROM mqtt_identities") == [("c1", None)]

    again = run_chargeline(database, tmp_path, "pki", "init")
    assert again.returncode == 2 and "refusing to replace it" in again.stderr
    stranger = run_chargeline(database, tmp_path, "pki", "client", "c9")
    assert stranger.returncode == 2 and "not in the registry" in stranger.stderr


def test_export_leaves_revoked_identities_out(database: str, tmp_path: Path) -> None:
    """Both exports run from the command line and list only active identities (a real
    Mosquitto runs the export in test_broker_policy)."""
    import_registry(database, registry_for(["c1", "c2"], 1))
    run_chargeline(database, tmp_path, "broker", "credentials", "issue", "--missing")
    run_chargeline(database, tmp_path, "broker", "credentials", "revoke", "c2")
    out = tmp_path / "mosquitto"
    result = run_chargeline(
        database, tmp_path, "broker", "export", "mosquitto", "--out", str(out), "--user", "root"
    )
    assert result.returncode == 0, result.stderr
    assert "1 identities (1 revoked, left out)" in result.stdout
    assert [line.split(":")[0] for line in (out / "passwords").read_text().splitlines()] == ["c1"]
    emqx = run_chargeline(
        database, tmp_path, "broker", "export", "emqx", "--out", str(tmp_path / "emqx")
    )
    assert emqx.returncode == 0 and (tmp_path / "emqx" / "acl.conf").exists()


DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
EXPORT_FOR_DEPLOY = [
    "--config", str(DEPLOY / "cloud.example.toml"),
    "broker", "export", "mosquitto",
    "--config-dir", "/etc/mosquitto/chargeline",
    "--persistence-dir", "/var/lib/mosquitto/chargeline",
]  # fmt: skip


def test_deploy_mosquitto_is_what_the_export_writes(database: str, tmp_path: Path) -> None:
    """deploy/mosquitto/ is the export for deploy/cloud.example.toml with the two services
    (regenerate: see deploy/mosquitto/README.md), so the shipped files never drift."""
    for name in ("svc_ingest", "svc_gateway", "svc_loads"):
        run_chargeline(database, tmp_path, "broker", "credentials", "issue", name)
    out = tmp_path / "export"
    result = run_chargeline(database, tmp_path, *EXPORT_FOR_DEPLOY, "--out", str(out))
    assert result.returncode == 0, result.stderr
    for name in ("mosquitto.conf", "acl"):
        assert (out / name).read_text() == (DEPLOY / "mosquitto" / name).read_text(), name
    assert not Path("/var/lib/mosquitto/chargeline").exists()
