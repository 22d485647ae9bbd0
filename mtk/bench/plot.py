"""``--plot``: file size against perplexity, one labelled point per artifact (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtk.errors import EnvironmentProblem
from mtk.formats.atomic import atomic_file

# Marker and colour per runtime, so that a GGUF and an ONNX file of the same size read apart.
STYLE = {"hf": ("o", "tab:blue"), "gguf": ("s", "tab:orange"), "onnx": ("^", "tab:green")}


def write_plot(rows: Sequence[dict[str, Any]], output: Path, *, title: str, overwrite: bool = True) -> Path:
    """Write a PNG of ``size_bytes`` (MB, log scale) against ``ppl``; the reference gets a dashed line."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: CI machines have none
        from matplotlib import pyplot as plt
        from matplotlib.ticker import ScalarFormatter
    except ImportError as exc:
        raise EnvironmentProblem("--plot needs matplotlib: pip install 'mtk[bench]'") from exc
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    try:
        for kind, (marker, color) in STYLE.items():
            pts = [r for r in rows if r["kind"] == kind]
            if pts:
                ax.scatter(
                    [r["size_bytes"] / 1e6 for r in pts], [r["ppl"] for r in pts], marker=marker, color=color, s=60,
                    label=kind, zorder=3,
                )  # fmt: skip
        # Labels alternate above and below their points (in size order), so that neighbours of similar size
        # and perplexity (GPTQ and AWQ of one model) do not print over each other.
        # The largest artifacts sit at the right edge: their labels go to the left of the point.
        largest = max(r["size_bytes"] for r in rows)
        for i, r in enumerate(sorted(rows, key=lambda r: r["size_bytes"])):
            label = r["name"] + f"\n{r['quantization']}" + (f", {r['bpw']:.2f} bpw" if r.get("bpw") else "")
            right = r["size_bytes"] >= 0.8 * largest
            offset = (-6 if right else 6, 6 if i % 2 == 0 else -24)
            ax.annotate(
                label, (r["size_bytes"] / 1e6, r["ppl"]), textcoords="offset points", xytext=offset, fontsize=8,
                ha="right" if right else "left",
            )  # fmt: skip
        ref = next((r for r in rows if r.get("is_reference")), None)
        if ref is not None:
            ax.axhline(ref["ppl"], color="grey", linestyle="--", linewidth=1, label="reference perplexity")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 100, 200 rather than 10^2, 2x10^2
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("artifact size (MB, log scale)")
        ax.set_ylabel("perplexity (lower is better)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.25, y=0.15)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_file(Path(output), overwrite=overwrite) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(output)
