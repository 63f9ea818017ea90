"""Agent-platform benchmarks: what an AI agent's tool calls cost.

Run ``.venv/bin/python bench/agents.py [--runs N]`` (or ``make bench``) as root
on a host where the ``code-interpreter`` template is built (see
docs/interpreter.md). It starts its own server on a free loopback port with a
temporary data dir under /var/tmp and always removes everything it made.

Sections:

a. code-interpreter cell round trip: ``sb.run_code("x = x + 1")`` in a warm
   python context (kernel already started), p50/p90 over ``--runs`` cells, side
   by side with ``sb.commands.run("true")`` measured in the same run on the
   same sandbox; the ratio is cell / command. Also the first cell of a new
   sandbox (gateway + kernel start) and the same round trip for bash and
   javascript cells.

Tables go to stdout, progress to stderr; the last stdout line is one JSON
object with every figure. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import BenchError, Server, default_templates, pct, say, sweep, table

TEMPLATE = "code-interpreter"


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    """Milliseconds of ``runs`` calls of ``fn``."""
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def interpreter_section(server: Server, runs: int) -> dict[str, Any]:
    say("interpreter: creating a sandbox")
    sb = server.create(memory_mib=1024)
    try:
        started = time.perf_counter()
        first = sb.run_code("x = 0", timeout=120)
        first_ms = (time.perf_counter() - started) * 1000
        if first.error is not None:
            raise BenchError(f"the first cell failed: {first.error}")
        say(f"interpreter: first cell (gateway + kernel start) {first_ms:.0f} ms")

        def cell() -> None:
            ex = sb.run_code("x = x + 1\nx")
            if ex.error is not None:
                raise BenchError(f"cell failed: {ex.error}")

        def command() -> None:
            if sb.commands.run("true").exit_code != 0:
                raise BenchError("true failed")

        timed(cell, 3)  # warm-up
        timed(command, 3)
        cells: list[float] = []
        commands: list[float] = []
        for _ in range(runs):  # interleaved, so both see the same machine load
            cells += timed(cell, 1)
            commands += timed(command, 1)
        final = sb.run_code("x").text
        if final != str(runs + 3):
            raise BenchError(f"the kernel lost its state: x = {final}, expected {runs + 3}")
        other: dict[str, list[float]] = {}
        for language, code in (("bash", "X=$((X + 1))"), ("javascript", "var y = (y || 0) + 1")):
            sb.run_code(code, language=language, timeout=60)  # start the kernel
            other[language] = timed(lambda c=code, lang=language: sb.run_code(c, language=lang), 20)
    finally:
        sb.kill()
        sb.close()
    return {
        "runs": runs,
        "first_cell_ms": first_ms,
        "cell_p50_ms": pct(cells, 50),
        "cell_p90_ms": pct(cells, 90),
        "command_true_p50_ms": pct(commands, 50),
        "command_true_p90_ms": pct(commands, 90),
        "ratio_p50": pct(cells, 50) / pct(commands, 50),
        "bash_cell_p50_ms": pct(other["bash"], 50),
        "javascript_cell_p50_ms": pct(other["javascript"], 50),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="agent tool-call costs (code interpreter)")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    templates = default_templates().resolve()
    if not (templates / TEMPLATE / "manifest.json").exists():
        say(f"bench: no {TEMPLATE} template in {templates}: build it first (docs/interpreter.md)")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="atelier-bench-agents-", dir="/var/tmp")).resolve()
    server = Server(workdir / "server", templates, template=TEMPLATE)
    result: dict[str, Any] = {}
    code = 0
    try:
        server.start()
        result = interpreter_section(server, args.runs)
    except BenchError as exc:
        say(f"bench: {exc}")
        code = 1
    finally:
        server.stop()
        left = sweep(workdir)
        if left:
            say("bench: could not remove: " + ", ".join(left))
            code = code or 1
    if result:
        table(
            f"code interpreter (warm python context, {args.runs} runs each, interleaved)",
            ("measure", "p50 ms", "p90 ms"),
            [
                ("run_code('x = x + 1')", result["cell_p50_ms"], result["cell_p90_ms"]),
                (
                    "commands.run('true')",
                    result["command_true_p50_ms"],
                    result["command_true_p90_ms"],
                ),
                ("bash cell (20 runs)", result["bash_cell_p50_ms"], None),
                ("javascript cell (20 runs)", result["javascript_cell_p50_ms"], None),
                ("first cell of a sandbox", result["first_cell_ms"], None),
            ],
        )
        print(f"\ncell / command p50 ratio: {result['ratio_p50']:.2f}")
        print(json.dumps({"bench": "agents", "interpreter": result}))
    return code


if __name__ == "__main__":
    sys.exit(main())
