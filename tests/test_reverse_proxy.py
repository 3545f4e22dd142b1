"""deploy/nginx/chargeline.conf, run by Debian's nginx in front of a running gateway and
authorization server (security review, finding 12): a partner gets a token and calls
the API through it over TLS, and a client trickling its headers is cut off by nginx."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from broker.pki import LocalCA
from cloud_gateway.operators import add_operator
from tests.conftest import Installation
from tests.partners import Partner
from tests.procs import free_port, wait_port

pytestmark = pytest.mark.processes

CONF = Path(__file__).parent.parent / "deploy" / "nginx" / "chargeline.conf"


def _nginx() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(found).exists(), "scripts/test installs Debian's nginx-light"
    return found


@pytest.fixture
def proxy(partner: Partner, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The example configuration with this test's ports, certificate and a 2 s header
    deadline (instead of 10 s); everything else as shipped."""
    ca = LocalCA(tmp_path / "pki")
    ca.init()
    cert = ca.issue_server(["127.0.0.1", "localhost"])
    port = free_port()
    api_port = partner.api.rsplit(":", 1)[1]
    auth_port = partner.token_url.split(":")[2].split("/")[0]
    site = CONF.read_text()
    for shipped, ours in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{api_port};"),
        ("server 127.0.0.1:8001;", f"server 127.0.0.1:{auth_port};"),
        ("/etc/chargeline/tls/api.pem", str(cert.cert)),
        ("/etc/chargeline/tls/api.key", str(cert.key)),
        ("client_header_timeout 10s;", "client_header_timeout 2s;"),
    ):
        assert shipped in site, shipped
        site = site.replace(shipped, ours)
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n access_log off;\n client_body_temp_path {tmp_path}/body;\n"
        f" proxy_temp_path {tmp_path}/proxy;\n include {tmp_path}/site.conf;\n}}\n"
    )
    check = subprocess.run(
        [_nginx(), "-t", "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([_nginx(), "-c", str(tmp_path / "nginx.conf")])
    try:
        wait_port(port)
        yield f"https://127.0.0.1:{port}", ca.cert_path
    finally:
        proc.terminate()
        proc.wait(15)


def test_the_example_proxy_serves_partners_and_cuts_off_slow_clients(
    partner: Partner,
    proxy: tuple[str, Path],
    installation: Installation,
) -> None:
    url, ca = proxy
    with httpx2.Client(verify=ssl.create_default_context(cafile=str(ca))) as http:
        token = http.post(
            f"{url}/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(partner.client.client_id, partner.client.client_secret),
        )
        assert token.status_code == 200, token.text
        access = token.json()["access_token"]
        status = http.get(
            f"{url}/v1/outlets/{installation.controllers[0]}-1/status",
            headers={"authorization": f"Bearer {access}"},
        )
        assert status.status_code == 200, status.text
        assert http.get(f"{url}/.well-known/jwks.json").json()["keys"]

    context = ssl.create_default_context(cafile=str(ca))
    host, port = url.removeprefix("https://").split(":")
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as slow,
    ):
        slow.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        answer = slow.recv(64)  # nginx closes at its header deadline
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 10


def test_behind_the_proxy_the_console_session_cookie_is_secure(
    partner: Partner, proxy: tuple[str, Path], installation: Installation
) -> None:
    """Through TLS at the proxy, the gateway sees https (X-Forwarded-Proto from a trusted
    proxy) and marks the console's session cookie Secure, HttpOnly and SameSite=Strict."""
    add_operator(installation.database, "olga", "admin", "a long console password")
    url, ca = proxy
    with httpx2.Client(verify=ssl.create_default_context(cafile=str(ca))) as http:
        login = http.post(
            f"{url}/console/login",
            data={"name": "olga", "password": "a long console password", "next": ""},
        )
    assert login.status_code == 303, login.text
    cookie = login.headers["set-cookie"].lower()
    assert cookie.startswith("chargeline_console=")
    for flag in ("secure", "httponly", "samesite=strict", "path=/console"):
        assert flag in cookie, cookie
