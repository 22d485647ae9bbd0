"""mtk run: a recipe's steps run once per change, the manifest and model cards, gates, and the Ray executor."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_mtk

import mtk
from mtk.errors import UsageError

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")

RECIPE = """
[source]
path = "{source}"
name = "tiny"
base_model = "test/tiny-llama"

[texts]
evaluation = "eval.txt"

[bench]
ctx = 64
windows = 2
gen_tokens = 0
fail_if = [{global_gate}]

[[artifact]]
name = "f16"
command = "gguf-export"
type = "f16"

[[artifact]]
name = "small"
command = "gguf-export"
type = "{small_type}"
fail_if = ["kl > 0.5"]
retries = 1
"""


def write_recipe(folder: Path, source: Path, *, small_type: str = "q8_0", global_gate: str = '"top1 < 0.5"') -> Path:
    path = folder / "release.toml"
    path.write_text(RECIPE.format(source=source, small_type=small_type, global_gate=global_gate), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def project(tiny_models: dict[str, Path], bible_text: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("release")
    (folder / "eval.txt").write_text(bible_text[-20000:], encoding="utf-8")
    write_recipe(folder, tiny_models["llama"])
    return folder


@pytest.fixture(scope="module")
def first_run(project: Path) -> dict[str, Any]:
    return mtk.run(project / "release.toml", root=project / "out").to_dict()


def ran(manifest: dict[str, Any]) -> set[str]:
    return {s["name"] for s in manifest["steps"] if not s["cached"]}


def test_a_recipe_makes_its_artifacts_with_a_manifest_and_cards(first_run: dict[str, Any], project: Path) -> None:
    out = project / "out"
    assert first_run["status"] == "ok" and first_run["exit_code"] == 0
    assert ran(first_run) == {"f16", "small", "bench"}
    by_name = {a["name"]: a for a in first_run["artifacts"]}
    for name in ("f16", "small"):
        entry = by_name[name]
        gguf = out / entry["path"]
        assert gguf.is_file() and gguf.stat().st_size == entry["size_bytes"]
        import hashlib

        assert hashlib.sha256(gguf.read_bytes()).hexdigest() == entry["sha256"]
        # The command's own verification in llama.cpp, and the bench row of the same file.
        assert entry["verification"]["tokenizer"]["identical"]
        assert entry["bench"]["kl_mean"] < 0.05 and entry["bench"]["top1"] > 0.8
        assert entry["mtk_command"].startswith("mtk --json gguf-export ")
        card = (out / name / "README.md").read_text(encoding="utf-8")
        assert card.startswith("---\nbase_model: test/tiny-llama\nlibrary_name: gguf\n")
        assert "quantized_by: mtk" in card and entry["sha256"] in card and "| kl_mean |" in card
    assert by_name["small"]["bits_per_weight"] < by_name["f16"]["bits_per_weight"]
    assert [g["failed"] for g in by_name["small"]["gates"]] == [False, False]  # top1 < 0.5 (all), kl > 0.5 (own)
    assert json.loads((out / "manifest.json").read_text()) == first_run
    assert first_run["versions"]["mtk"] == mtk.__version__ and first_run["versions"]["llama-cpp-python"]


def test_a_rerun_with_nothing_changed_runs_no_step(first_run: dict[str, Any], project: Path) -> None:
    start = time.monotonic()
    again = mtk.run(project / "release.toml", root=project / "out").to_dict()
    assert ran(again) == set() and time.monotonic() - start < 20
    assert [a["sha256"] for a in again["artifacts"]] == [a["sha256"] for a in first_run["artifacts"]]
    plan = mtk.run(project / "release.toml", root=project / "out", dry_run=True).to_dict()
    assert all(s["cached"] for s in plan["steps"])


def test_a_changed_option_reruns_only_what_depends_on_it(
    first_run: dict[str, Any], project: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path, tiny_models["llama"], small_type="q4_0")
    (tmp_path / "eval.txt").write_text((project / "eval.txt").read_text())
    plan = mtk.run(recipe, root=project / "out", dry_run=True).to_dict()
    assert {s["name"]: s["cached"] for s in plan["steps"]} == {"f16": True, "small": False, "bench": False}
    changed = mtk.run(recipe, root=project / "out").to_dict()
    assert ran(changed) == {"small", "bench"}
    small = next(a for a in changed["artifacts"] if a["name"] == "small")
    assert "--type q4_0" in small["mtk_command"] and small["sha256"] != first_run["artifacts"][1]["sha256"]
    # --force reruns a step even though the store holds it; the same bytes come out, so bench stays cached.
    forced = mtk.run(recipe, root=project / "out", force=["f16"]).to_dict()
    assert ran(forced) == {"f16"}
    with pytest.raises(UsageError, match="no such step"):
        mtk.run(recipe, root=project / "out", force=["nope"])


def test_a_failing_gate_exits_5_and_the_manifest_says_which(
    first_run: dict[str, Any], project: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    # Gates are judged on the stored bench: a new gate reruns nothing.
    recipe = write_recipe(tmp_path, tiny_models["llama"], global_gate='"kl > 1e-9"')
    (tmp_path / "eval.txt").write_text((project / "eval.txt").read_text())
    proc = run_mtk("run", str(recipe), "--out", str(project / "out"))
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("mtk: error: gates failed: ")
    manifest = json.loads((project / "out" / "manifest.json").read_text())
    assert manifest["status"] == "gates failed" and ran(manifest) == set()
    failed = {a["name"] for a in manifest["artifacts"] if a["status"] == "gates failed"}
    assert failed == {"f16", "small"}
    assert all((project / "out" / a["path"]).is_file() for a in manifest["artifacts"])  # every artifact kept


def test_bad_recipes_get_one_line_errors(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    bad = tmp_path / "bad.toml"
    cases = {
        "[source\n": "not valid TOML",
        f'[source]\npath = "{tiny_models["llama"]}"\n': "lists no [[artifact]]",
        f'[source]\npath = "{tiny_models["llama"]}"\n[[artifact]]\nname = "x"\ncommand = "gguf-export"\nbits = 4\n': (
            "unknown option 'bits'"
        ),
        f'[source]\npath = "{tiny_models["llama"]}"\n[[artifact]]\nname = "x"\ncommand = "fly"\n': "command must be",
        '[source]\npath = "missing"\n': "does not exist",
    }
    for text, message in cases.items():
        bad.write_text(text, encoding="utf-8")
        proc = run_mtk("run", str(bad))
        assert proc.returncode == 2, (text, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_ray_executor_gives_the_local_manifest_and_retries_a_killed_worker(
    first_run: dict[str, Any], project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray", reason="ray comes with the test extra")
    marker = tmp_path / "killed"
    monkeypatch.setenv("MTK_RUN_KILL_ONCE", f"small={marker}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = mtk.run(project / "release.toml", root=tmp_path / "out", executor="ray").to_dict()
    finally:
        ray.shutdown()
    assert marker.exists()  # the worker running "small" was killed once, and Ray ran the task again
    assert on_ray["exit_code"] == 0 and ran(on_ray) == {"f16", "small", "bench"}

    def portable(manifest: dict[str, Any]) -> dict[str, Any]:
        m = json.loads(json.dumps(manifest).replace(manifest["root"], "ROOT"))
        for s in m["steps"]:
            for k in ("seconds", "host", "cached", "attempts"):
                s.pop(k)
        for a in m["artifacts"]:
            for k in ("prefill_tps", "decode_tps"):  # speeds: timings too
                a["bench"].pop(k)
        return m

    assert portable(on_ray) == portable(first_run)


def test_the_json_schema_accepts_the_recipes_and_names_the_parsers_keys() -> None:
    import tomllib

    from mtk.pipeline import recipe as parser

    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with ray (the test extra)")
    root = Path(__file__).resolve().parent.parent
    schema = json.loads((root / "docs" / "recipe.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    demo = tomllib.loads((root / "recipes" / "demo.toml").read_text())
    jsonschema.validate(demo, schema)
    test_recipe = tomllib.loads(RECIPE.format(source="x", small_type="q8_0", global_gate='"kl > 1"'))
    jsonschema.validate(test_recipe, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**demo, "artifact": [{"name": "bench", "command": "quantize"}]}, schema)
    item = schema["properties"]["artifact"]["items"]["properties"]
    assert set(item["command"]["enum"]) == set(parser.COMMANDS)
    assert set(parser.RESOURCE_KEYS) <= set(item)
