"""chargeline: the command line, settings and the glue shared by its processes."""

__version__ = "0.1.0"
