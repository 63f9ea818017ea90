"""A new warm-pool member runs one login shell before it is handed out (core/pool.py),
and the claimer sees nothing of it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from server_harness import new_server, shut_down

from atelier import Sandbox
from atelier.images.store import TemplateInfo

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WARMUP = re.compile(r"exec pid=(\d+) user=user .* argv=\['/bin/bash', '-l', '-c', 'true'\]")


def _warmed_member(sandboxes: Path, deadline_s: float = 120) -> str | None:
    """The id of a pool member whose agent log shows the warm-up exited 0."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for member in sandboxes.iterdir() if sandboxes.is_dir() else []:
            try:
                text = (member / "run" / "agent.log").read_text(errors="replace")
            except OSError:
                continue
            for pid in WARMUP.findall(text):
                if f"exit pid={pid} code=0 " in text:
                    return member.name
        time.sleep(0.2)
    return None


def test_pool_members_are_warmed_up_and_the_claimer_sees_no_trace(
    base_template: TemplateInfo,
) -> None:
    srv = new_server(base_template, pool_size=1)
    srv.start()
    try:
        member = _warmed_member(srv.data_dir / "sandboxes")
        assert member is not None, "no pool member ran the warm-up login shell"
        sb = Sandbox.create(api_url=srv.url, token=srv.token, timeout=120)
        assert sb.id == member
        assert sb.commands.list() == []  # the warm-up is gone from the process table
        assert sb.commands.run("echo hi").stdout == "hi\n"
        sb.kill()
    finally:
        shut_down(srv)
