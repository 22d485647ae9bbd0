"""Bad input never crashes: seeded mutants of every reader's input are read, or refused with one MtkError line
of its own exit code (never the exit-1 internal error); and one test per defect the fuzzing found (issue 16).

The mutants come from tests/fuzz_mutants.py, shared with scripts/fuzz.py (long runs; results in
docs/benchmarks.md). Here a few per reader and kind run in this process, and a sample through the CLI.
"""

from __future__ import annotations

import json
import resource
import struct
from pathlib import Path

import pytest
from conftest import run_mtk
from fuzz_mutants import GGUFMutator, SafetensorsMutator, build_fixtures, iter_cases, run_case

import mtk
from mtk.errors import InvalidFileError, quoted

# Per reader, the seeds each mutation kind gets: ~700 cases in all, ~20 s on a busy 2-core machine.
SEEDS = {
    "gguf-f32": 12,
    "gguf-q4_k_m": 3,
    "gguf-spm": 6,
    "gguf-retype": 4,
    "imatrix": 4,
    "safetensors": 8,
    "config.json": 6,
    "tokenizer.json": 6,
    "tokenizer_config.json": 4,
    "calibration": 9,
}


@pytest.fixture(scope="session")
def fuzz(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    return build_fixtures(tiny_models["llama"], tiny_models["mistral"], tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("reader", sorted(SEEDS))
def test_mutants_are_read_or_refused_cleanly(fuzz, reader: str) -> None:
    # Fixed seeds: a failure names the reader, kind and seed that replay it (scripts/fuzz.py --first-seed).
    outcomes = [(c, run_case(c.call)) for c in iter_cases(fuzz, range(SEEDS[reader]), (reader,))]
    crashes = [f"{c.reader} {c.kind} seed {c.seed}: {o.detail}" for c, o in outcomes if o.status == "crash"]
    assert not crashes, "\n".join(crashes)
    statuses = {o.status for _, o in outcomes}
    # The mutants must reach the checks: some are refused (every reader), and some GGUF ones still read.
    assert "clean" in statuses, reader
    if reader.startswith("gguf"):
        assert "ok" in statuses, reader


def test_fuzzing_memory_stays_bounded(fuzz) -> None:
    """Counts of 2^62 and dims that overflow are refused before anything is allocated for them."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cases = [c for c in iter_cases(fuzz, range(8), ("gguf-f32",)) if c.kind in ("huge_count", "dim_overflow")]
    cases += [c for c in iter_cases(fuzz, range(8), ("safetensors",)) if c.kind in ("shape_value", "offsets")]
    for c in cases:
        assert run_case(c.call).status != "crash"
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, grown_mb


def test_cli_sample_exits_with_a_code_and_one_line(fuzz, tmp_path: Path) -> None:
    m = GGUFMutator(fuzz.gguf["f32"].read_bytes())
    st = SafetensorsMutator((fuzz.hf / "model.safetensors").read_bytes())
    codes = set()
    for i, kind in enumerate(("key_rename", "retype", "nested_array", "non_utf8", "huge_count", "truncate")):
        path = tmp_path / f"m{i}.gguf"
        path.write_bytes(m.mutate(i, kind))
        for args in (("inspect", str(path)), ("gguf-import", str(path), str(tmp_path / f"o{i}"), "--no-verify")):
            r = run_mtk(*args)
            codes.add(r.returncode)
            assert r.returncode != 1, (kind, r.stderr)
            if r.returncode:
                assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("mtk: error: "), r.stderr
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in fuzz.hf.iterdir():
        (folder / f.name).symlink_to(f)
    for i, kind in enumerate(("shape_value", "nesting", "non_utf8", "header_length")):
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors").write_bytes(st.mutate(i, kind))
        r = run_mtk("gguf-export", str(folder), "--dry-run")
        assert r.returncode == 4, (kind, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 4 in codes


# --- one test per defect of issue 16 ---------------------------------------------------------------------------


def _gguf(fuzz) -> GGUFMutator:
    return GGUFMutator(fuzz.gguf["f32"].read_bytes())


def _field(m: GGUFMutator, kind: str, context: str):
    return next(f for f in m.fields if f.kind == kind and f.context == context)


def _rebuilt(m: GGUFMutator, field, replacement: bytes) -> bytes:
    buf = bytearray(m.data)
    m._rebuild(buf, field, replacement)
    return bytes(buf)


def _import(path: Path, out: Path) -> None:
    mtk.gguf_import(path, out, verify=False, device="cpu")


def test_missing_required_hyper_parameter_is_named(fuzz, tmp_path: Path) -> None:
    # One flipped byte in the key llama.embedding_length (the KeyError: 'hidden_size').
    m = _gguf(fuzz)
    key = _field(m, "key", "llama.embedding_length")
    buf = bytearray(m.data)
    buf[key.offset] = ord("x")
    path = tmp_path / "m.gguf"
    path.write_bytes(buf)
    mtk.inspect(path)  # a summary still reads
    with pytest.raises(InvalidFileError, match=r"lacks 'llama\.embedding_length', which llama needs"):
        _import(path, tmp_path / "out")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("llama.block_count", struct.pack("<IQ", 8, 3) + b"abc", "must be an unsigned integer, not str 'abc'"),
        ("llama.attention.head_count", struct.pack("<Ii", 5, -1), "must be an unsigned integer"),
        ("llama.rope.freq_base", struct.pack("<If", 6, float("nan")), "must be a number"),
        # A float64 past float32's range: the config's float32 would overflow (a RuntimeWarning line before).
        ("llama.attention.layer_norm_rms_epsilon", struct.pack("<Id", 12, 1e300), "must be a number"),
        ("tokenizer.ggml.tokens", struct.pack("<IIQ", 9, 4, 0), "must be an array of strings"),
        ("general.file_type", struct.pack("<IQ", 8, 2) + b"32", "must be an unsigned integer"),
    ],
)
def test_wrong_value_type_is_refused_when_read(fuzz, tmp_path: Path, key: str, value: bytes, message: str) -> None:
    m = _gguf(fuzz)
    path = tmp_path / "m.gguf"
    path.write_bytes(_rebuilt(m, _field(m, "value", key), value))
    with pytest.raises(InvalidFileError, match=message):
        mtk.inspect(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("llama.attention.head_count", struct.pack("<II", 4, 0), "head_count' is 0"),
        ("llama.attention.head_count_kv", struct.pack("<II", 4, 3), "4 heads do not divide into 3 KV heads"),
        ("llama.block_count", struct.pack("<II", 4, 1 << 30), "claims 1073741824 layers in 21 tensors"),
        ("llama.attention.key_length", struct.pack("<II", 4, 3), "heads of 3 dimensions"),
    ],
)
def test_impossible_hyper_parameters_are_refused(fuzz, tmp_path: Path, key: str, value: bytes, message: str) -> None:
    m = _gguf(fuzz)
    path = tmp_path / "m.gguf"
    path.write_bytes(_rebuilt(m, _field(m, "value", key), value))
    with pytest.raises(InvalidFileError, match=message):
        _import(path, tmp_path / "out")


def test_rope_scaling_without_its_factor_is_refused(fuzz, tmp_path: Path) -> None:
    # The KeyError: 'llama.rope.scaling.factor': a linear scaling type, added after freq_base, alone.
    m = _gguf(fuzz)
    kv = _field(m, "kv", "llama.rope.freq_base")
    item = struct.pack("<Q", 23) + b"llama.rope.scaling.type" + struct.pack("<IQ", 8, 6) + b"linear"
    data = _rebuilt(m, kv, m.data[kv.offset : kv.offset + kv.size] + item)
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    path = tmp_path / "m.gguf"
    path.write_bytes(data[:16] + struct.pack("<Q", n_kv + 1) + data[24:])
    with pytest.raises(InvalidFileError, match="lacks 'llama.rope.scaling.factor', which its RoPE scaling needs"):
        _import(path, tmp_path / "out")


def test_zero_dimension_tensor_is_refused(fuzz, tmp_path: Path) -> None:
    m = _gguf(fuzz)
    dim = _field(m, "dim", "output_norm.weight")
    buf = bytearray(m.data)
    buf[dim.offset : dim.offset + 8] = bytes(8)
    path = tmp_path / "m.gguf"
    path.write_bytes(buf)
    with pytest.raises(InvalidFileError, match="has a zero dimension"):
        mtk.inspect(path)


def test_nested_arrays_are_refused_not_recursed(fuzz, tmp_path: Path) -> None:
    m = _gguf(fuzz)
    path = tmp_path / "m.gguf"
    for seed in range(4):  # depths 3 to 100,000
        path.write_bytes(m.mutate(seed, "nested_array"))
        with pytest.raises(InvalidFileError):
            mtk.inspect(path)


def test_non_utf8_token_is_refused_on_import(fuzz, tmp_path: Path) -> None:
    m = _gguf(fuzz)
    target = [f for f in m.fields if f.kind == "str" and f.context == "tokenizer.ggml.tokens"][10]
    buf = bytearray(m.data)
    buf[target.offset] = 0xFF
    path = tmp_path / "m.gguf"
    path.write_bytes(buf)
    mtk.inspect(path)  # GGUF copies keep such bytes losslessly
    with pytest.raises(InvalidFileError, match="is not valid UTF-8|not in the vocabulary"):
        _import(path, tmp_path / "out")


def test_merge_of_a_token_outside_the_vocabulary_is_refused(fuzz, tmp_path: Path) -> None:
    # tokenizers panics (pyo3 PanicException, a BaseException) on such a merge; mtk refuses it first.
    from mtk.converters import tokenizer_bpe

    pre = tokenizer_bpe.pre_tokenizer_type("default")
    with pytest.raises(InvalidFileError, match=r"entry 'a b' needs 'ab', which is not in the vocabulary"):
        tokenizer_bpe.build_tokenizer(["a", "b"], ["a b"], pre)
    with pytest.raises(InvalidFileError, match=r"needs 'c'"):
        tokenizer_bpe.build_tokenizer(["a", "b", "ac"], ["a c"], pre)


def test_messages_quote_and_cut_untrusted_names(fuzz, tmp_path: Path) -> None:
    # An unknown value type after a key with control characters (the "\u0004\u0000..." message).
    m = _gguf(fuzz)
    key = _field(m, "key", "llama.feed_forward_length")
    vtype = _field(m, "vtype", "llama.feed_forward_length")
    buf = bytearray(m.data)
    buf[key.offset + 5] = 4
    buf[vtype.offset : vtype.offset + 4] = struct.pack("<I", 3290472644)
    path = tmp_path / "m.gguf"
    path.write_bytes(buf)
    with pytest.raises(InvalidFileError) as exc:
        mtk.inspect(path)
    assert "unknown value type 3290472644 in 'llama\\x04feed_forward_length'" in str(exc.value)
    assert str(exc.value).isprintable()
    assert quoted("x" * 1000) == "'" + "x" * 55 + "...'" and len(quoted("x" * 1000)) == 60
    assert quoted("a\nb\x1b") == "'a\\nb\\x1b'"


def _safetensors_folder(fuzz, tmp_path: Path, data: bytes) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir(exist_ok=True)
    for f in fuzz.hf.iterdir():
        if f.name != "model.safetensors" and not (folder / f.name).exists():
            (folder / f.name).symlink_to(f)
    (folder / "model.safetensors").write_bytes(data)
    return folder


def _header(fuzz) -> tuple[dict, bytes]:
    data = (fuzz.hf / "model.safetensors").read_bytes()
    (n,) = struct.unpack_from("<Q", data)
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _pack(header: dict, body: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + body


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e: e.update(shape=[1e400, 64]), "bad entry"),  # OverflowError: float infinity before
        (lambda e: e.update(shape=["64", 64]), "bad entry"),
        (lambda e: e.update(shape=[True, 64]), "bad entry"),
        (lambda e: e.update(data_offsets=[0, 1e400]), "bad entry"),
        (lambda e: e.update(shape=[1 << 62], data_offsets=[0, 1 << 64]), "ends at byte"),  # no allocation
        (lambda e: e.update(shape=[0, 64]), "its dtype and shape need 0"),
        (lambda e: e.update(dtype="F4"), "bad entry"),
    ],
)
def test_lying_safetensors_headers_are_refused(fuzz, tmp_path: Path, edit, message: str) -> None:
    header, body = _header(fuzz)
    edit(header["model.embed_tokens.weight"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    folder = _safetensors_folder(fuzz, tmp_path, _pack(header, body))
    for call in (lambda: mtk.inspect(folder), lambda: mtk.gguf_export(folder, dry_run=True)):
        with pytest.raises(InvalidFileError, match=message):
            call()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 << 10


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (struct.pack("<Q", 100_000) + b"[" * 100_000, "nests too deeply"),
        (struct.pack("<Q", 1 << 40) + b"{}", "header length 1099511627776 does not fit"),
        (struct.pack("<Q", 3) + b'{"\xff', "not valid JSON"),
    ],
)
def test_broken_safetensors_headers_are_refused(fuzz, tmp_path: Path, raw: bytes, message: str) -> None:
    folder = _safetensors_folder(fuzz, tmp_path, raw)
    with pytest.raises(InvalidFileError, match=message):
        mtk.inspect(folder)


def test_zero_size_tensor_lying_to_the_config_is_refused(fuzz, tmp_path: Path) -> None:
    # A zero-row embedding with zero bytes: a valid safetensors file, but not the config's vocabulary.
    header, body = _header(fuzz)
    entry = header["model.embed_tokens.weight"]
    entry["shape"] = [0, 64]
    entry["data_offsets"] = [entry["data_offsets"][0]] * 2
    folder = _safetensors_folder(fuzz, tmp_path, _pack(header, body))
    for call in (
        lambda: mtk.gguf_export(folder, tmp_path / "o.gguf", type="q8_0", verify=False),
        lambda: mtk.quantize(folder, tmp_path / "q", method="rtn", group_size=32, verify=False, device="cpu"),
    ):
        with pytest.raises(InvalidFileError, match="do not fit model.embed_tokens.weight"):
            call()


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("config.json", lambda c: c.update(vocab_size=1 << 62), "do not fit"),
        ("config.json", lambda c: c.update(num_hidden_layers=3), "num_hidden_layers is 3"),
        # Q rows of 4 x 32 for a q_proj of 64: the export's per-head reshape raised RuntimeError before.
        (
            "config.json",
            lambda c: c.update(head_dim=32),
            "of 32 and hidden_size 64 do not fit 'model.layers.0.self_attn",
        ),
        ("config.json", lambda c: c.update(hidden_size="64"), "transformers cannot load it"),
        ("config.json", lambda c: c.update(architectures="LlamaForCausalLM"), "architectures is not a list"),
        ("config.json", lambda c: c["rope_parameters"].update(rope_theta=""), "rope_theta must be a positive"),
        ("config.json", lambda c: c.update(head_dim=0), "head_dim must be a positive integer, not '0'"),
        ("config.json", lambda c: c["rope_parameters"].update(rope_type="abc"), "a RoPE type transformers knows"),
        ("config.json", lambda c: c["rope_parameters"].update(rope_theta=0), "rope_theta must be a positive"),
        ("tokenizer.json", lambda t: t["model"].update(vocab={"a": "x"}), "malformed tokenizer files"),
        ("tokenizer.json", lambda t: t.update(added_tokens=[{"id": 1 << 62, "content": "x"}]), "token ids up to"),
        (
            "tokenizer.json",
            lambda t: t.update(added_tokens=[{"id": 3, "content": 0}]),
            "added token '0' is not a string",
        ),
        ("tokenizer_config.json", lambda t: t.update(bos_token=["x"]), "malformed tokenizer files"),
    ],
)
def test_lying_json_files_are_refused(fuzz, tmp_path: Path, name: str, edit, message: str) -> None:
    doc = json.loads((fuzz.hf / name).read_text())
    edit(doc)
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in fuzz.hf.iterdir():
        if f.name != name:
            (folder / f.name).symlink_to(f)
    (folder / name).write_text(json.dumps(doc))
    with pytest.raises(InvalidFileError, match=message):
        mtk.gguf_export(folder, tmp_path / "o.gguf", type="q8_0", verify=False)


def test_deeply_nested_json_is_refused(fuzz, tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in fuzz.hf.iterdir():
        if f.name != "tokenizer.json":
            (folder / f.name).symlink_to(f)
    (folder / "tokenizer.json").write_bytes(b"[" * 100_000)
    with pytest.raises(InvalidFileError, match="nested too deeply"):
        mtk.gguf_export(folder, dry_run=True)
    calib = tmp_path / "c.jsonl"
    calib.write_bytes(b"[" * 100_000 + b"\n")
    with pytest.raises(InvalidFileError, match="nested too deeply"):
        mtk.imatrix(fuzz.hf, calib, tmp_path / "i.gguf", samples=1, seq_len=8, device="cpu")


def test_config_no_model_can_be_built_from_is_refused_by_quantize(fuzz, tmp_path: Path) -> None:
    doc = json.loads((fuzz.hf / "config.json").read_text())
    doc["hidden_act"] = "abc"  # loads in transformers; building the MLP raises KeyError
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in fuzz.hf.iterdir():
        if f.name != "config.json":
            (folder / f.name).symlink_to(f)
    (folder / "config.json").write_text(json.dumps(doc))
    with pytest.raises(InvalidFileError, match="no model can be built from it"):
        mtk.quantize(folder, tmp_path / "q", method="rtn", group_size=32, verify=False, device="cpu")
