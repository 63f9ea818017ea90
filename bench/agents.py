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

b. e2b compatibility layer: with the official ``e2b`` SDK pointed at Atelier
   (docs/e2b.md), ``Sandbox.create()`` -> first ``commands.run("echo ready")``
   output -> ``kill()``, interleaved with the same through Atelier's own SDK on
   the same server (``base`` template, no warm pool), p50 over ``--e2b-runs``;
   the ratio is e2b / Atelier. Also a warm ``commands.run("true")`` round trip
   through each SDK on one sandbox each. Runs without the code-interpreter
   template (section a is then skipped).

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
E2B_TEMPLATE = "base"


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


def e2b_section(server: Server, runs: int) -> dict[str, Any]:
    """Section b: the e2b SDK through Atelier's adapter vs Atelier's own SDK."""
    try:
        import e2b
    except ImportError as exc:
        raise BenchError("the e2b package is not installed (pip install -e '.[dev]')") from exc
    opts: dict[str, Any] = {
        "api_key": server.token,
        "api_url": f"{server.url}/e2b",
        "sandbox_url": server.url,
    }

    def via_e2b() -> float:
        started = time.perf_counter()
        sb = e2b.Sandbox.create(timeout=900, **opts)
        try:
            out = sb.commands.run("echo ready").stdout
            took = (time.perf_counter() - started) * 1000
        finally:
            sb.kill()
        if out != "ready\n":
            raise BenchError(f"e2b: unexpected output {out!r}")
        return took

    def via_atelier() -> float:
        started = time.perf_counter()
        sb = server.create()
        try:
            out = sb.commands.run("echo ready").stdout
            took = (time.perf_counter() - started) * 1000
        finally:
            sb.kill()
            sb.close()
        if out != "ready\n":
            raise BenchError(f"atelier: unexpected output {out!r}")
        return took

    say(f"e2b: create -> first output, {runs} runs per SDK (interleaved)")
    via_e2b(), via_atelier()  # warm-up: page cache, imports, connection pools
    e2b_ms: list[float] = []
    atelier_ms: list[float] = []
    for _ in range(runs):
        e2b_ms.append(via_e2b())
        atelier_ms.append(via_atelier())

    say("e2b: warm commands.run('true') round trips")
    e2b_sb = e2b.Sandbox.create(timeout=900, **opts)
    atelier_sb = server.create()
    try:
        e2b_true: list[float] = []
        atelier_true: list[float] = []
        for _ in range(3):
            e2b_sb.commands.run("true")
            atelier_sb.commands.run("true")
        for _ in range(max(runs * 3, 20)):
            e2b_true += timed(lambda: e2b_sb.commands.run("true"), 1)
            atelier_true += timed(lambda: atelier_sb.commands.run("true"), 1)
    finally:
        e2b_sb.kill()
        atelier_sb.kill()
        atelier_sb.close()
    return {
        "runs": runs,
        "e2b_create_first_output_p50_ms": pct(e2b_ms, 50),
        "atelier_create_first_output_p50_ms": pct(atelier_ms, 50),
        "create_first_output_ratio_p50": pct(e2b_ms, 50) / pct(atelier_ms, 50),
        "e2b_command_true_p50_ms": pct(e2b_true, 50),
        "atelier_command_true_p50_ms": pct(atelier_true, 50),
        "command_true_ratio_p50": pct(e2b_true, 50) / pct(atelier_true, 50),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="agent tool-call costs (interpreter, e2b)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--e2b-runs", type=int, default=10, help="creates per SDK (section b)")
    args = parser.parse_args(argv)
    templates = default_templates().resolve()
    has_interpreter = (templates / TEMPLATE / "manifest.json").exists()
    if not has_interpreter:
        say(f"bench: no {TEMPLATE} template in {templates}: section a skipped")
    if not (templates / E2B_TEMPLATE / "manifest.json").exists():
        say(f"bench: no {E2B_TEMPLATE} template in {templates}: build it first")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="atelier-bench-agents-", dir="/var/tmp")).resolve()
    result: dict[str, Any] = {}
    compat: dict[str, Any] = {}
    code = 0
    servers: list[Server] = []
    try:
        if has_interpreter:
            server = Server(workdir / "server", templates, template=TEMPLATE)
            servers.append(server)
            server.start()
            result = interpreter_section(server, args.runs)
        e2b_server = Server(workdir / "server-e2b", templates, template=E2B_TEMPLATE)
        servers.append(e2b_server)
        e2b_server.start()
        compat = e2b_section(e2b_server, args.e2b_runs)
    except BenchError as exc:
        say(f"bench: {exc}")
        code = 1
    finally:
        for each in servers:
            each.stop()
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
    if compat:
        table(
            f"e2b SDK through Atelier vs Atelier's SDK ({args.e2b_runs} creates each, interleaved)",
            ("measure", "e2b p50 ms", "atelier p50 ms", "ratio"),
            [
                (
                    "create -> first commands.run output",
                    compat["e2b_create_first_output_p50_ms"],
                    compat["atelier_create_first_output_p50_ms"],
                    compat["create_first_output_ratio_p50"],
                ),
                (
                    "warm commands.run('true')",
                    compat["e2b_command_true_p50_ms"],
                    compat["atelier_command_true_p50_ms"],
                    compat["command_true_ratio_p50"],
                ),
            ],
        )
    if result or compat:
        print(json.dumps({"bench": "agents", "interpreter": result or None, "e2b": compat or None}))
    return code


if __name__ == "__main__":
    sys.exit(main())
