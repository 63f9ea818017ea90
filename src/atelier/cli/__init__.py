"""The ``atelier`` command line: a thin Typer + Rich layer over the SDK (``main.app``)."""
