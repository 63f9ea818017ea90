"""``atelier prebuild add|ls|builds|logs|run|rm``: keep a branch prebuilt."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from atelier.cli.context import state
from atelier.cli.output import console, print_json, print_table
from atelier.sdk import Prebuilds

__all__ = ["app"]

app = typer.Typer(
    help="Prebuilds: a repository's branch built on every commit (docs/prebuilds.md)."
)

IdArg = Annotated[str, typer.Argument(help="Prebuild id (pb-...).", show_default=False)]


def _prebuilds(ctx: typer.Context) -> Prebuilds:
    options = state(ctx).sdk_options()
    return Prebuilds(
        api_url=options["api_url"], token=options["token"], transport=options["transport"]
    )


def _env_secrets(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        name, eq, secret = pair.partition("=")
        if not name or not eq or not secret:
            raise typer.BadParameter(f"{pair!r}: use ENV_NAME=SECRET", param_hint="--env-secret")
        out[name] = secret
    return out


@app.command("add")
def add(
    ctx: typer.Context,
    repo: Annotated[str, typer.Argument(help="Repository URL.", show_default=False)],
    branch: Annotated[str, typer.Option("--branch", "-b", help="Branch to prebuild.")] = "main",
    devcontainer: Annotated[
        str | None, typer.Option("--devcontainer", help="Which devcontainer.json.")
    ] = None,
    secret: Annotated[
        str | None, typer.Option("--secret", help="Your stored secret to clone with.")
    ] = None,
    env_secret: Annotated[
        list[str] | None,
        typer.Option("--env-secret", help="ENV=SECRET: for onCreate/updateContent only."),
    ] = None,
    keep: Annotated[int, typer.Option("--keep", help="Ready prebuilds kept.")] = 3,
    webhook: Annotated[
        str | None,
        typer.Option("--webhook", help="github | gitlab | gitea | forgejo | bitbucket"),
    ] = None,
    webhook_secret_env: Annotated[
        str | None,
        typer.Option("--webhook-secret-env", help="Environment variable holding its secret."),
    ] = None,
    poll: Annotated[
        int | None, typer.Option("--poll", help="Poll the remote every N seconds.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Keep REPO's branch prebuilt; prints the id (and the webhook path to give the host)."""
    webhook_secret = None
    if webhook_secret_env is not None:
        webhook_secret = os.environ.get(webhook_secret_env)
        if not webhook_secret:
            raise typer.BadParameter(
                f"${webhook_secret_env} is not set", param_hint="--webhook-secret-env"
            )
    with _prebuilds(ctx) as prebuilds:
        info = prebuilds.add(
            repo, branch, devcontainer=devcontainer, git_secret=secret,
            env_secrets=_env_secrets(env_secret), keep=keep, webhook_provider=webhook,
            webhook_secret=webhook_secret, poll_interval=poll,
        )  # fmt: skip
    if as_json:
        print_json(info)
        return
    console.print(info.id)
    if info.webhook_path:
        console.print(f"webhook: {state(ctx).sdk_options()['api_url'] or ''}{info.webhook_path}")


@app.command("ls")
def ls(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Your prebuilds, with the build new workspaces start from."""
    with _prebuilds(ctx) as prebuilds:
        infos = prebuilds.list()
    if as_json:
        print_json(infos)
        return
    table = Table("ID", "REPO", "BRANCH", "TRIGGERS", "KEEP", "READY COMMIT")
    for info in infos:
        triggers = [t for t in (info.webhook_provider, f"poll {info.poll_interval}s"
                                if info.poll_interval else None) if t]  # fmt: skip
        ready = info.latest_ready.commit[:12] if info.latest_ready else ""
        table.add_row(
            info.id, info.repo, info.branch, ", ".join(triggers) or "manual", str(info.keep), ready
        )
    print_table(table)


@app.command("builds")
def builds(
    ctx: typer.Context,
    prebuild_id: IdArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A prebuild's builds, newest first."""
    with _prebuilds(ctx) as prebuilds:
        items = prebuilds.builds(prebuild_id)
    if as_json:
        print_json(items)
        return
    table = Table("BUILD", "COMMIT", "STATE", "TRIGGER", "SECONDS", "SNAPSHOT", "ERROR")
    for b in items:
        seconds = f"{b.duration_seconds:.1f}" if b.duration_seconds is not None else ""
        table.add_row(
            b.id, b.commit[:12], b.state, b.trigger, seconds, b.snapshot_id or "",
            (b.error or "")[:60],
        )  # fmt: skip
    print_table(table)


@app.command("logs")
def logs(
    ctx: typer.Context,
    prebuild_id: IdArg,
    build_id: Annotated[
        str | None, typer.Argument(help="Build id (default: the newest).", show_default=False)
    ] = None,
) -> None:
    """A build's log (clone, image, onCreateCommand..., snapshot)."""
    with _prebuilds(ctx) as prebuilds:
        if build_id is None:
            items = prebuilds.builds(prebuild_id)
            if not items:
                raise typer.BadParameter(f"{prebuild_id} has no builds yet")
            build_id = items[0].id
        text = prebuilds.logs(prebuild_id, build_id)
    typer.echo(text, nl=False)


@app.command("run")
def run(ctx: typer.Context, prebuild_id: IdArg) -> None:
    """Build the branch's head now (once per commit)."""
    with _prebuilds(ctx) as prebuilds:
        build = prebuilds.run(prebuild_id)
    console.print(f"{build.id} {build.commit[:12]} {build.state}")


@app.command("rm")
def rm(ctx: typer.Context, prebuild_id: IdArg) -> None:
    """Remove a prebuild and its snapshots (ones workspaces still use stay until they go)."""
    with _prebuilds(ctx) as prebuilds:
        prebuilds.delete(prebuild_id)
    console.print(f"removed {prebuild_id}")
