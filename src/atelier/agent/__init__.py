"""The in-sandbox agent. Standard library only; relative imports only.

This package is bind-mounted read-only into every sandbox and run there under
the name ``agent`` (see :mod:`.bootstrap`), so nothing in it may import
``atelier.*``.
"""
