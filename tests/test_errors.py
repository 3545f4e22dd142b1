"""One exception tree: every exception chargeline defines derives from ChargelineError, and
the command line turns any of them into one clear line and its exit status."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

from schemas.errors import ChargelineError, InputError, NotFound, Refused
from tests.procs import run_chargeline

pytestmark = pytest.mark.processes

PACKAGES = ["schemas", "kernel", "store", "charging", "edge_agent", "broker", "ingest"]
PACKAGES += ["cloud_gateway", "chargeline"]
#: Subclasses of a library's own exceptions, raised into that library's code.
FOREIGN = {"broker.connections.PacketTooLarge"}


def defined_exceptions() -> dict[str, type[BaseException]]:
    found = {}
    for package in PACKAGES:
        root = importlib.import_module(package)
        modules = [root.__name__]
        modules += [m.name for m in pkgutil.walk_packages(root.__path__, f"{package}.")]
        for name in modules:
            if name.endswith("__main__"):
                continue
            module = importlib.import_module(name)
            for attr, value in vars(module).items():
                if (
                    inspect.isclass(value)
                    and issubclass(value, BaseException)
                    and value.__module__ == name
                ):
                    found[f"{name}.{attr}"] = value
    return found


def test_every_exception_of_ours_is_a_chargeline_error() -> None:
    found = defined_exceptions()
    assert len(found) >= 12, sorted(found)  # the walk really saw the tree
    outside = [
        name
        for name, cls in found.items()
        if name not in FOREIGN and not issubclass(cls, ChargelineError)
    ]
    assert not outside


def test_the_branches_keep_the_builtin_meaning_callers_catch() -> None:
    from schemas.codec import CodecError
    from store.registry_file import RegistryFileError

    assert issubclass(CodecError, InputError) and issubclass(CodecError, ValueError)
    assert issubclass(RegistryFileError, InputError)
    assert issubclass(NotFound, LookupError)
    error = RegistryFileError("sites.toml", [(3, "bad id")])
    assert error.context == {"source": "sites.toml"} and str(error) == "sites.toml:3: bad id"
    assert isinstance(CodecError("too deep", kind="MeterBatch"), ChargelineError)
    assert issubclass(Refused, ChargelineError)


def test_the_cli_prints_one_line_for_an_error_of_ours(database: str, tmp_path: Path) -> None:
    unknown = run_chargeline(database, tmp_path, "clients", "disable", "no-such-client")
    assert unknown.returncode == 1
    # (log lines may come first: the database in use)
    assert (
        unknown.stderr.splitlines()[-1] == "chargeline: no client 'no-such-client' that is active"
    )
    assert "Traceback" not in unknown.stderr

    scopes = run_chargeline(database, tmp_path, "clients", "add", "x", "--scopes", "nope")
    assert scopes.returncode == 2  # bad input on the command line
    assert scopes.stderr.splitlines()[-1].startswith("chargeline: unknown scopes ['nope']")

    bad = tmp_path / "sites.toml"
    bad.write_text('[[sites]]\nsite_id = "s 1"\n')
    refused = run_chargeline(database, tmp_path, "registry", "import", str(bad))
    assert refused.returncode == 1, refused.stderr
    said = [line for line in refused.stderr.splitlines() if line.startswith("chargeline: ")]
    assert said and said[0].startswith(f"chargeline: {bad}:"), refused.stderr
    assert "Traceback" not in refused.stderr
