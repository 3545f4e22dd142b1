"""OCPP stations beside the partner's stack, for the end-to-end tests: a 1.6J wallbox and a
2.0.1 fast charger registered through the documented registry format, their passwords
issued by the documented command, ``chargeline ocpp`` running, and the ``ocpp`` package's
charge point side (``ocpp_bridge.simulated``) driven from a thread of its own."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from broker.pki import LocalCA
from ocpp_bridge.simulated import Car, Plug, SimulatedStation
from store import roles
from tests.conftest import Installation
from tests.db import query
from tests.partners import Partner, chargeline
from tests.procs import Proc, free_port, wait_for, wait_port

T = TypeVar("T")


class Loop:
    """An event loop in a thread: the stations live there while a test runs in sync code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tasks: list[Any] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        self.tasks.append(future)
        return future

    def close(self) -> None:
        async def cancel_all() -> None:
            running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

        self.run(cancel_all(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Stations:
    """The registered stations, their passwords and the running bridge."""

    installation: Installation
    url: str  # ws://127.0.0.1:PORT/ocpp
    bridge: Proc
    ids: dict[str, str]  # "1.6" / "2.0.1" → station id
    cids: dict[str, str]  # "1.6" / "2.0.1" → controller id
    outlets: dict[str, str]  # "1.6" / "2.0.1" → the connector's public outlet id
    passwords: dict[str, str]  # station id → password
    ops: str  # the bridge's /healthz, /readyz and /metrics
    loop: Loop = field(default_factory=Loop)

    def station(
        self, version: str, *, password: str | None = None, **options: Any
    ) -> SimulatedStation:
        inst = self.installation
        sid = self.ids[version]
        car = (
            Car(current_a=16.0, voltage_v=200.0)
            if version == "1.6"
            else Car(current_a=180.0, voltage_v=800.0, soc_percent=40.0)  # 144 kW
        )
        return SimulatedStation(
            url=self.url,
            station_id=sid,
            password=self.passwords[sid] if password is None else password,
            version=version,
            plugs=[Plug(connector=1, evse=1, car=car)],
            clock=inst.now,
            time_scale=inst.time_scale,
            **options,
        )

    def online(self, version: str) -> None:
        """Wait until the cloud has the station online (ingest saw its presence)."""
        cid = self.cids[version]
        wait_for(
            lambda: (
                query(
                    self.installation.database,
                    "SELECT online FROM controller_status WHERE controller_id = %s",
                    cid,
                )
                == [(True,)]
            ),
            timeout=20,
            what=f"{cid} online in the cloud",
        )

    def closed_transaction(self, version: str) -> tuple[float, float]:
        """(meterStart, meterStop) of the station's last ended transaction, once recorded."""
        rows = wait_for(
            lambda: query(
                self.installation.database,
                "SELECT meter_start_wh, meter_stop_wh FROM ocpp_transactions"
                " WHERE controller_id = %s AND meter_stop_wh IS NOT NULL"
                " ORDER BY stopped_at DESC LIMIT 1",
                self.cids[version],
            ),
            timeout=10,
            what="the transaction recorded with its meterStop",
        )
        return rows[0][0], rows[0][1]

    def start(self, station: SimulatedStation) -> SimulatedStation:
        self.loop.spawn(station.run())
        wait_for(station.connected.is_set, timeout=20, what=f"{station.station_id} connected")
        return station


REGISTRY = """
[[sites]]
id = "{site}"
name = "Station site"
contract_current_a = 400
tariff_per_kwh = 30

[[stations]]
id = "WB-{tag}"                # an AC wallbox, OCPP 1.6J
controller_id = "wb-{tag}"
site = "{site}"
ocpp_version = "1.6"

[[stations.connectors]]
number = 1
connector = 1
outlet_id = "WB-{tag}-1"
current_type = "AC"
rated_current_a = 32
rise_threshold_a = 2.0

[[stations]]
id = "DC-{tag}"                # a DC fast charger, OCPP 2.0.1
controller_id = "dc-{tag}"
site = "{site}"
ocpp_version = "2.0.1"

[[stations.connectors]]
number = 1
evse = 1
connector = 1
outlet_id = "DC-{tag}-1"
current_type = "DC"
rated_current_a = 200
rated_power_kw = 150
rise_threshold_a = 2.0
"""


@pytest.fixture
def stations(
    partner: Partner, installation: Installation, request: pytest.FixtureRequest
) -> Iterator[Stations]:
    """With ``@pytest.mark.ocpp_tls``, the endpoint is wss:// with a server certificate from
    the project's PKI, and takes client certificates from it (security profiles 2 and 3)."""
    inst = installation
    tag = uuid.uuid4().hex[:6]
    path = inst.tmp / "stations.toml"
    path.write_text(REGISTRY.format(tag=tag, site=f"s-{tag}"))
    imported = chargeline(inst, "registry", "import", str(path))
    assert imported.returncode == 0, imported.stderr
    ids = {"1.6": f"WB-{tag}", "2.0.1": f"DC-{tag}"}
    cids = {"1.6": f"wb-{tag}", "2.0.1": f"dc-{tag}"}
    passwords = {}
    for version, cid in cids.items():
        # By its controller id, or (the 2.0.1 charger here) by its OCPP station id.
        named = ids[version] if version == "2.0.1" else cid
        issued = chargeline(inst, "broker", "credentials", "issue", named)
        assert issued.returncode == 0, issued.stderr
        name, password = issued.stdout.splitlines()[0].split()
        assert name == cid
        passwords[ids[version]] = password
    port, ops = free_port(), free_port()
    login = roles.create_login(inst.database, f"t{tag}_ocpp", "ocpp")
    tls: dict[str, str] = {}
    scheme = "ws"
    if request.node.get_closest_marker("ocpp_tls"):
        ca = LocalCA(inst.tmp / "data" / "pki")
        ca.init()
        server = ca.issue_server(["127.0.0.1"])
        tls = {
            "ocpp_tls_cert_file": str(server.cert),
            "ocpp_tls_key_file": str(server.key),
            "ocpp_client_ca_file": str(ca.cert_path),
        }
        scheme = "wss"
    bridge = Proc(
        "ocpp",
        ["ocpp"],
        inst.env(
            database_url=login,
            ocpp_bind=f"127.0.0.1:{port}",
            call_timeout_s=2,
            transaction_wait_s=2,
            registry_refresh_s=1,
            ops_bind=f"127.0.0.1:{ops}",
            **tls,
        ),
        inst.tmp,
    ).start()
    wait_port(port, proc=bridge)
    found = Stations(
        installation=inst,
        url=f"{scheme}://127.0.0.1:{port}/ocpp",
        bridge=bridge,
        ids=ids,
        cids=cids,
        outlets={"1.6": f"WB-{tag}-1", "2.0.1": f"DC-{tag}-1"},
        passwords=passwords,
        ops=f"http://127.0.0.1:{ops}",
    )
    yield found
    found.loop.close()
