"""Atelier: isolated workspaces for developers and AI agents."""

__version__ = "0.1.0"
