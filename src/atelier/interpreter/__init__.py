"""The code interpreter: stateful kernels inside a sandbox (docs/interpreter.md).

``service.InterpreterService`` starts one gateway per sandbox (``guest/gateway.py``,
run by the template's ``python3``) and runs cells through it over the agent's
TCP tunnel; ``events`` holds the pure event and timeout rules.
"""

from .events import LANGUAGES, api_event, deadlines, mime_bundle
from .service import CellStream, InterpreterService

__all__ = ["LANGUAGES", "CellStream", "InterpreterService", "api_event", "deadlines", "mime_bundle"]
