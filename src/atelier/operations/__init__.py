"""Long-running operations (template builds and pulls) run by the server.

An operation is a row in the ``operations`` table (state ``running``,
``succeeded`` or ``failed``, kind, target, owner token, error payload,
result, timestamps) plus an NDJSON log file ``<data_dir>/operations/<id>.log``
(one ``{"at", "line"}`` object per line). :mod:`.manager` runs them as asyncio
tasks and streams their logs; :mod:`.templates` holds the template jobs, the
in-use check and version garbage collection; :mod:`.upload` receives and
unpacks build contexts.
"""

from .manager import Operation, OperationLog, OperationManager
from .templates import TemplateOperations

__all__ = ["Operation", "OperationLog", "OperationManager", "TemplateOperations"]
