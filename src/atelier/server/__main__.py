"""``python -m atelier.server``: run the server with settings from the environment."""

from ..config import Settings
from .main import serve

serve(Settings())
