"""Looking after the store: ``aioabort purge`` and ``aioabort db init``."""

from __future__ import annotations

from datetime import timedelta

import click

from . import _output
from ._common import Commands, cli, confirm, dump, duration, make_app, run, yes_option


@cli.command()
@click.option(
    "--older-than",
    "older_than",
    required=True,
    callback=duration,
    metavar="DURATION",
    help="Delete finished records that ended longer ago than this: 30s, 15m, 12h, 7d.",
)
@yes_option()
@click.option("--json", "as_json", is_flag=True, help='Print {"purged": N}.')
@click.pass_context
def purge(ctx: click.Context, older_than: timedelta, yes: bool, as_json: bool) -> None:
    """Delete finished records (SUCCESS, FAILURE, ABORTED) older than --older-than, with their
    abort-log rows, in batches. A running or queued task is never deleted.

    Exit codes: 0 done, 3 a store error, 4 not confirmed.
    """
    app = make_app(ctx)
    question = f"Delete the finished records of {app.url} that ended more than {older_than} ago?"
    confirm(_output.printable(question), yes, action="purge")

    async def go() -> int:
        async with app:
            return await app.purge(older_than=older_than)

    removed = run(go)
    if as_json:
        dump({"purged": removed})
    else:
        click.echo(f"purged {removed} finished record(s)")


@cli.group(cls=Commands)
def db() -> None:
    """Manage the store's schema."""


@db.command("init")
@click.pass_context
def db_init(ctx: click.Context) -> None:
    """Create (or migrate) the schema. Other commands do this on first use too."""
    app = make_app(ctx.find_root(), create=True)

    async def go() -> None:
        async with app:
            pass

    run(go)
    click.echo(f"store ready: {app.url}")
