"""Atelier: isolated workspaces for developers and AI agents."""
