"""``mtk run``: a recipe's artifacts, gated, cached by content, with a manifest and model cards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mtk.cli.common import render
from mtk.errors import error_for


def run_command(
    recipe: Annotated[Path, typer.Argument(help="The recipe (TOML; docs/recipes.md).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output root (default: the recipe's [output] root).")
    ] = None,
    store: Annotated[Path | None, typer.Option(help="Step store (default: OUT/.mtk-store).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Steps run at once, as their resources allow.")] = 1,
    force: Annotated[list[str] | None, typer.Option("--force", help="Rerun this step (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; run nothing.")] = False,
    executor: Annotated[str, typer.Option(help="local, or ray (an existing Ray cluster).")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (ray's --address).")] = None,
) -> None:
    """Make every artifact of a recipe: import, imatrix, exports and quantizations, bench; each step once.

    A step runs again only when its inputs' contents, its options or mtk's version changed; finished artifacts
    are kept when a later step fails. Writes OUT/manifest.json and a README.md model card per artifact; exits
    with the failed step's code, or 5 when a gate fails.
    Examples: [b]mtk run release.toml[/b] · [b]mtk run release.toml --dry-run[/b] ·
    [b]mtk run release.toml -j 2 --force q4_k_m[/b] · [b]mtk run release.toml --executor ray --address auto[/b]
    """
    from mtk.api import run

    result = run(
        recipe, root=out, store=store, jobs=jobs, force=force or [], dry_run=dry_run,
        executor=executor,  # type: ignore[arg-type]  # checked by the pipeline
        address=address,
    ).to_dict()  # fmt: skip
    render(result, _human(result))
    if result.get("exit_code"):
        raise error_for(result["exit_code"])(result["error"])


def _human(result: dict[str, Any]) -> str:
    if result["schema"].startswith("mtk.run.plan"):
        return "\n".join(
            f"{s['name']:<16} {s['command']:<12} {'cached' if s['cached'] else 'run'}" for s in result["steps"]
        )
    lines = [f"{s['name']:<16} {s['status']:<8} {'(cached)' if s['cached'] else ''}" for s in result["steps"]]
    lines += [f"{a['name']}: {a['path']} {a['status']}" for a in result["artifacts"]]
    return "\n".join(lines + [f"wrote {Path(result['root']) / 'manifest.json'}"])
