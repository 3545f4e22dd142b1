"""The operator console in a real browser: Playwright (PyPI) driving Debian's Chromium
against the running stack (the partner fixture: gateway, auth, ingest, webhooks, an edge).
Each page's screenshot goes to the test's directory, and to docs/console/ when
CHARGELINE_CONSOLE_SCREENSHOTS names that directory."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from paho.mqtt import publish
from playwright.sync_api import Browser, Page, expect, sync_playwright

from cloud_gateway.operators import add_operator
from kernel.settings import MqttUrl
from schemas.topics import Topics
from tests.conftest import Installation
from tests.db import query
from tests.partners import Partner
from tests.procs import wait_for

pytestmark = [pytest.mark.processes, pytest.mark.usefixtures("operators")]

PASSWORD = "a long console password"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: apt-get install chromium"
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def operators(installation: Installation) -> None:
    """alice, an admin, and victor, read-only, for every test here."""
    add_operator(installation.database, "alice", "admin", PASSWORD)
    add_operator(installation.database, "victor", "read-only", PASSWORD)


def shot(page: Page, name: str, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    keep = os.environ.get("CHARGELINE_CONSOLE_SCREENSHOTS")
    if keep:
        page.screenshot(path=str(Path(keep) / f"{name}.png"), full_page=True)


def start(partner: Partner, installation: Installation, outlet_no: int, charge_id: str) -> str:
    """A partner's start on the running edge's outlet ``outlet_no``; the outlet id."""
    outlet = f"{installation.controllers[0]}-{outlet_no}"
    started = partner.post("/v1/charges", {"outlet_id": outlet, "charge_id": charge_id})
    assert started.status_code == 201, started.text
    return outlet


def log_in(page: Page, api: str, name: str, password: str = PASSWORD) -> None:
    page.goto(f"{api}/console/login")
    page.get_by_label("Operator").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_a_page_without_a_session_goes_to_the_login_and_back(
    browser: Browser, partner: Partner, tmp_path: Path
) -> None:
    page = browser.new_page()
    page.goto(f"{partner.api}/console/charges?state=stopped")
    expect(page).to_have_url(
        f"{partner.api}/console/login?next=%2Fconsole%2Fcharges%3Fstate%3Dstopped"
    )
    shot(page, "login", tmp_path)
    page.get_by_label("Operator").fill("alice")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("wrong name or password")
    page.get_by_label("Operator").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{partner.api}/console/charges?state=stopped")  # back where it was
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{partner.api}/console/login")
    page.goto(f"{partner.api}/console/charges")
    expect(page).to_have_url(f"{partner.api}/console/login?next=%2Fconsole%2Fcharges")
    page.close()


def test_an_admin_sees_a_charge_appear_and_stops_it_from_the_console(
    browser: Browser,
    partner: Partner,
    installation: Installation,
    tmp_path: Path,
) -> None:
    page = browser.new_page()
    log_in(page, partner.api, "alice")
    expect(page).to_have_url(f"{partner.api}/console/charges")
    expect(page.get_by_text("alice (admin)")).to_be_visible()

    start(partner, installation, 3, "console-1")
    row = page.locator('tr[data-charge="console-1"]')
    expect(row).to_be_visible(timeout=15_000)  # no reload: the rows refresh themselves
    expect(row.locator("td.state")).to_have_text(re.compile("^(on|drawing)$"), timeout=15_000)
    shot(page, "charges", tmp_path)

    row.get_by_role("button", name="Stop").click()
    expect(page).to_have_url(f"{partner.api}/console/charges")
    wait_for(
        lambda: partner.get("/v1/charges/console-1").json()["state"] == "stopped",
        timeout=20,
        what="the charge stopped",
    )
    expect(page.locator('tr[data-charge="console-1"] td.state')).to_contain_text(
        "stopped", timeout=15_000
    )
    assert query(installation.database, "SELECT operator, action FROM operator_actions") == [
        ("alice", "stop charge")
    ]
    issued = query(
        installation.database,
        "SELECT m.issued_by FROM commands m JOIN charges c USING (charge_id)"
        " WHERE c.partner_charge_id = 'console-1' AND NOT m.turn_on",
    )
    assert issued == [("operator:alice",)]
    stopped = wait_for(
        lambda: [w for w in partner.webhooks("console-1") if w["type"] == "charge.stopped"],
        timeout=20,
        what="the charge.stopped webhook",
    )
    assert stopped[0]["data"]["reason"] == "operator stopped"

    page.locator('tr[data-charge="console-1"]').get_by_role("link", name="console-1").click()
    timeline = page.locator("table.timeline")
    for moment in (
        "requested",
        "ON sent (generation",
        "ON acknowledged: applied, breaker on",
        "OFF sent",
        "by operator:alice",
        "stopped: operator stopped",
    ):
        expect(timeline).to_contain_text(moment)
    billed = partner.get("/v1/charges/console-1").json()  # what the partner bills
    expect(page.locator("dd.fee")).to_contain_text(f"{billed['fee']:.2f} {billed['currency']}")
    expect(page.locator("table.webhooks")).to_contain_text("charge.stopped", timeout=15_000)
    shot(page, "charge", tmp_path)
    page.close()


def test_a_read_only_operator_sees_but_cannot_act_and_forms_need_the_sessions_token(
    browser: Browser,
    partner: Partner,
    installation: Installation,
) -> None:
    start(partner, installation, 5, "console-2")
    page = browser.new_page()
    log_in(page, partner.api, "victor")
    row = page.locator('tr[data-charge="console-2"]')
    expect(row).to_be_visible(timeout=15_000)
    expect(row.get_by_role("button", name="Stop")).to_have_count(0)

    charge_id = row.locator("td").first.get_attribute("title")
    cookie = {c["name"]: c["value"] for c in page.context.cookies()}["chargeline_console"]
    csrf = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    stop = f"{partner.api}/console/charges/{charge_id}/stop"
    with httpx2.Client(cookies={"chargeline_console": cookie}) as client:
        as_reader = client.post(stop, data={"csrf_token": csrf})
        assert as_reader.status_code == 403 and "may look but not act" in as_reader.text
        for guess in ("guessed", "ünïcode", ""):
            forged = client.post(stop, data={"csrf_token": guess})
            assert forged.status_code == 403 and "token does not match" in forged.text
    assert partner.get("/v1/charges/console-2").json()["state"] in ("on", "drawing")
    assert query(installation.database, "SELECT count(*) FROM operator_actions") == [(0,)]
    page.close()


def test_an_admin_acknowledges_an_alarm_that_a_bad_message_raised(
    browser: Browser,
    partner: Partner,
    installation: Installation,
    tmp_path: Path,
) -> None:
    """A controller sends something ingest cannot read: it becomes a dead letter, which the
    Alarms page shows until an admin acknowledges it (recorded with who did)."""
    cid = installation.controllers[0]

    broker = MqttUrl(installation.mqtt_url)
    publish.single(  # paho's own: Playwright's sync API holds this thread's event loop
        Topics(installation.topic_root).meter(cid),
        b"\xc1 not msgpack",
        qos=1,
        hostname=broker.host,
        port=broker.port,
    )
    page = browser.new_page()
    log_in(page, partner.api, "alice")
    page.get_by_role("link", name="Alarms").click()
    alarm = page.locator('tr[data-alarm^="dead:"]').filter(has_text=cid)
    expect(alarm).to_be_visible(timeout=15_000)  # the rows refresh themselves
    expect(alarm).to_contain_text("dead letter")
    shot(page, "alarms", tmp_path)
    alarm.get_by_role("button", name="Acknowledge").click()
    expect(page.locator('tr[data-alarm^="dead:"]').filter(has_text=cid)).to_contain_text(
        "acknowledged by alice"
    )
    assert query(
        installation.database,
        "SELECT operator, action, target LIKE 'dead:%%' FROM operator_actions",
    ) == [("alice", "acknowledge alarm", True)]
    page.close()


def test_the_sites_page_shows_each_sites_controllers_outlets_energy_and_load(
    browser: Browser,
    partner: Partner,
    installation: Installation,
    tmp_path: Path,
) -> None:
    start(partner, installation, 3, "console-3")
    page = browser.new_page()
    log_in(page, partner.api, "victor")  # a read-only operator sees every page
    page.get_by_role("link", name="Sites").click()
    site = page.locator('section[data-site="test-site"]')
    expect(site.locator("dd.online")).to_have_text("1 of 3")  # one controller runs an edge
    expect(site.locator("dd.outlets")).to_contain_text("1 charging")
    expect(site.locator("dd.outlets")).to_contain_text("16 offline")  # the two silent ones
    chart = site.locator(".chart")
    expect(chart.locator("canvas")).to_have_count(1, timeout=15_000)  # uPlot drew it
    assert int(chart.get_attribute("data-points") or 0) > 0  # the edge's minutes
    shot(page, "sites", tmp_path)
    load = page.request.get(f"{partner.api}/console/sites/test-site/load.json").json()
    assert load["cap_a"] == 100 and len(load["t"]) == len(load["current_a"]) > 0
    assert page.request.get(f"{partner.api}/console/sites/nowhere/load.json").status == 404
    page.close()


def test_an_outlets_page_shows_its_commands_lifecycle_and_an_admin_acts_on_it(
    browser: Browser,
    partner: Partner,
    installation: Installation,
    tmp_path: Path,
) -> None:
    outlet = start(partner, installation, 5, "console-4")
    wait_for(
        lambda: partner.get("/v1/charges/console-4").json()["state"] == "drawing",
        timeout=20,
        what="the current's rise",
    )
    page = browser.new_page()
    log_in(page, partner.api, "alice")
    page.locator('tr[data-charge="console-4"]').get_by_role("link", name=outlet).click()
    expect(page).to_have_url(f"{partner.api}/console/outlets/{outlet}")
    expect(page.locator("dd.charge")).to_contain_text("console-4 (drawing")
    command = page.locator("table.commands tbody tr").first
    # sent → acknowledged (applied, breaker on) → current rise, each with its time
    expect(command).to_contain_text("ON")
    expect(command).to_contain_text(partner.client.client_id)
    expect(command).to_contain_text("applied")
    expect(command.locator("td").nth(6)).to_have_text(re.compile(r"\d\d:\d\d:\d\d"))

    page.get_by_role("button", name="Request a status").click()
    # the edge answers within seconds, and the page shows it without a reload
    expect(page.locator("table.events").get_by_text("status", exact=True).first).to_be_visible(
        timeout=20_000
    )
    shot(page, "outlet", tmp_path)

    assert partner.post("/v1/charges/console-4/stop").status_code == 200
    page.get_by_role("button", name="Put out of service").click()
    expect(page.locator("dd.status")).to_have_text("out of service")
    refused = partner.post("/v1/charges", {"outlet_id": outlet, "charge_id": "console-5"})
    assert refused.status_code >= 400, refused.text  # no new start on it
    page.get_by_role("button", name="Put back in service").click()
    expect(page.locator("dd.status")).not_to_have_text("out of service")
    actions = query(
        installation.database, "SELECT action, target FROM operator_actions ORDER BY id"
    )
    assert [a for a, _ in actions] == [
        "request status",
        "put out of service",
        "put in service",
    ] and {t for _, t in actions} == {outlet}

    page.get_by_role("link", name="Partners and controllers").click()
    expect(page.locator("table.partners")).to_contain_text("WeCharge")
    online = page.locator(f'tr[data-controller="{installation.controllers[0]}"]')
    expect(online).to_contain_text("yes")
    shot(page, "clients", tmp_path)
    assert partner.client.client_secret not in page.content()
    page.close()


@pytest.mark.edge(sim_failed_breakers="6")
def test_a_breaker_that_fails_shows_as_a_faulted_outlet_and_an_alarm(
    browser: Browser,
    partner: Partner,
    installation: Installation,
) -> None:
    outlet = f"{installation.controllers[0]}-6"  # its breaker never closes
    partner.post("/v1/charges", {"outlet_id": outlet, "charge_id": "console-6"})
    page = browser.new_page()
    log_in(page, partner.api, "alice")
    page.get_by_role("link", name="Alarms").click()
    alarm = page.locator('tr[data-alarm^="edge:"]').filter(has_text="breaker failed to move")
    expect(alarm).to_contain_text(f"{installation.controllers[0]} outlet 6", timeout=20_000)
    page.get_by_role("link", name="Sites").click()
    faulted = page.locator('section[data-site="test-site"] .faulted')
    expect(faulted).to_have_text("1 faulted")
    page.get_by_role("link", name="Alarms").click()
    alarm.get_by_role("button", name="Acknowledge").click()
    page.get_by_role("link", name="Sites").click()
    expect(faulted).to_have_text("0 faulted")
    page.close()


def test_charges_are_found_by_the_days_they_were_requested_and_read_on_a_phone(
    browser: Browser,
    partner: Partner,
    installation: Installation,
    tmp_path: Path,
) -> None:
    start(partner, installation, 4, "console-7")
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = phone.new_page()
    log_in(page, partner.api, "victor")
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    page.goto(f"{partner.api}/console/charges?since={yesterday}")
    expect(page.locator('tr[data-charge="console-7"]')).to_be_visible()
    page.goto(f"{partner.api}/console/charges?until={yesterday}")
    expect(page.get_by_text("No charge matches.")).to_be_visible()
    page.goto(f"{partner.api}/console/charges?since=not-a-day")  # ignored, not an error
    expect(page.locator('tr[data-charge="console-7"]')).to_be_visible()
    for name in ("charges", "sites", "alarms"):
        page.goto(f"{partner.api}/console/{name}")
        wide = page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
        assert wide <= 1, f"the {name} page scrolls sideways on a phone by {wide} px"
    page.goto(f"{partner.api}/console/charges")
    shot(page, "phone-charges", tmp_path)
    phone.close()
