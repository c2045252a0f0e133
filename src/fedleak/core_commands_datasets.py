"""``fedleak datasets``: which datasets exist, which files they need and whether they are found.

The CLI owner wires it in with ``app.command("datasets")(datasets_command)`` (or ``register(app)``).
"""

from __future__ import annotations

from typing import Optional

import typer


def datasets_command(
    data_dir: Optional[str] = typer.Option(  # noqa: UP007 - typer needs Optional on Python 3.10
        None,
        "--data-dir",
        help="Folder holding dataset files (default: $FEDLEAK_DATA_DIR or the user cache dir).",
    ),
) -> None:
    """List the registered datasets, the files each expects and whether they are in the data dir."""
    from rich.console import Console
    from rich.table import Table

    from fedleak.data import describe_datasets

    rows = describe_datasets(data_dir)
    where = rows[0]["data_dir"] if rows else ""
    table = Table(title=f"datasets (data dir: {where})", show_lines=False)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("found", overflow="fold")
    table.add_column("download")
    table.add_column("expected files / layout", overflow="fold")
    table.add_column("description", overflow="fold")
    table.add_column("source / licence", overflow="fold")
    for r in rows:
        found = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[r["found"]]
        if r["found"] and r["location"]:
            found += f"\n{r['location']}"
        table.add_row(
            r["name"],
            found,
            "yes" if r["downloadable"] else "no",
            r["files"],
            r["description"],
            f"{r['source']}\n{r['license']}",
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("datasets")(datasets_command)
