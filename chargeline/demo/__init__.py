"""``chargeline demo``: the whole system on one machine (see ``run``)."""

from chargeline.demo.run import main

__all__ = ["main"]
