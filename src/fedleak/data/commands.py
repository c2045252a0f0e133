"""``fedleak datasets``: which datasets exist, which files they need and whether they are found.
"""

from __future__ import annotations

from typing import Any, Optional

import typer


def _status(found: bool | None) -> str:
    word = {True: "yes", False: "no", None: "-"}[found]
    color = {True: typer.colors.GREEN, False: typer.colors.RED, None: None}[found]
    return typer.style(word, fg=color, bold=found is not None) if color else word


def format_dataset(r: dict[str, Any]) -> list[str]:
    """One block per dataset: a head line, then one indented line per field, never wrapped mid-word
    (click strips the colours when the output is not a terminal)."""
    found = _status(r["found"])
    if r["found"] and r["location"]:
        found += f" ({r['location']})"
    head = f"{typer.style(r['name'], bold=True)}  found: {found}  download: {'yes' if r['downloadable'] else 'no'}"
    lines = [head, f"    {r['description']}", f"    files: {r['files']}"]
    if r.get("aliases"):
        lines.append(f"    also called: {', '.join(r['aliases'])}")
    lines.append(f"    source: {r['source']} (licence: {r['license']})")
    return lines


def datasets_command(
    data_dir: Optional[str] = typer.Option(  # noqa: UP007 - typer needs Optional on Python 3.10
        None,
        "--data-dir",
        help="Folder holding dataset files (default: $FEDLEAK_DATA_DIR or the user cache dir).",
    ),
) -> None:
    """List the registered datasets, the files each expects and whether they are in the data dir."""
    from fedleak.data import describe_datasets

    rows = describe_datasets(data_dir)
    where = rows[0]["data_dir"] if rows else ""
    out = [f"datasets (data dir: {where})", ""]
    for r in rows:
        out += [*format_dataset(r), ""]
    typer.echo("\n".join(out).rstrip())


def register(app: typer.Typer) -> None:
    app.command("datasets")(datasets_command)
