"""The table of GGUF types (mtk.kernels.types): its rows agree with gguf-py, every kernel it names exists, a
type is registered once, every list of types derives from it, and gguf-export's help lists exactly its types."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace

import pytest
import typer
from conftest import run_mtk
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from mtk.cli.app import app
from mtk.converters import gguf_types
from mtk.converters.hf_to_gguf import IMPORTANCE_TYPES
from mtk.errors import UnsupportedError
from mtk.kernels import dequant, kquants, legacy_importance, native, quantize, types
from mtk.kernels.types import ROWS, GGUFType, Importance, Kernel

ROW_IDS = [row.name for row in ROWS]
WRITTEN = [row for row in ROWS if row.writes]


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_row_agrees_with_gguf_py(row: GGUFType) -> None:
    assert row.qtype.name == row.name
    assert GGML_QUANT_SIZES[row.qtype] == (row.block_size, row.type_size)
    for name in row.file_types:
        assert gguf_types.FILE_TYPE_NAMES[name] in LlamaFileType


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_every_named_kernel_exists(row: GGUFType) -> None:
    kernels = (row.decode, row.encode, row.reference, row.importance_encode, row.importance_reference)
    assert [k for k in kernels if k is not None and not callable(k.load())] == []
    assert row.reads  # mtk reads every type it knows; a row without a decoder would be a half-added type


def test_a_missing_kernel_fails_loudly() -> None:
    with pytest.raises(AttributeError, match="_q9_0"):
        Kernel("mtk.kernels.dequant", "_q9_0").load()


def test_a_type_without_a_kernel_says_so() -> None:
    with pytest.raises(UnsupportedError, match="IQ2_XXS has no encoder"):
        types.get("IQ2_XXS").encoder(reference=True)
    with pytest.raises(UnsupportedError, match="Q8_0 has no separate importance encoder"):
        types.get("Q8_0").importance_encoder()


def test_a_type_registered_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="Q4_0"):
        types._registry((*ROWS, replace(types.get("Q4_0"), type_size=19)))


def test_inconsistent_rows_are_refused() -> None:
    q4_k = types.get("Q4_K")
    with pytest.raises(ValueError, match="reference twin"):
        replace(q4_k, reference=None)
    with pytest.raises(ValueError, match="importance_encode"):
        replace(q4_k, importance=Importance.SEPARATE)
    with pytest.raises(ValueError, match="bare name"):
        replace(q4_k, file_type=None)
    with pytest.raises(ValueError, match="cannot write"):
        GGUFType("IQ2_XXS", 256, 66, file_types=("iq2_xxs",))


def test_lists_of_types_derive_from_the_table() -> None:
    written = {row.qtype for row in WRITTEN}
    assert written == quantize.QUANTIZE_TYPES | kquants.KQUANT_TYPES
    assert not quantize.QUANTIZE_TYPES & kquants.KQUANT_TYPES
    assert {row.qtype for row in ROWS if row.reads} == dequant.SUPPORTED_TYPES
    assert {row.qtype for row in WRITTEN if row.uses_importance} == IMPORTANCE_TYPES
    assert {r.qtype for r in ROWS if r.importance is Importance.SEPARATE} == legacy_importance.LEGACY_IMPORTANCE_TYPES
    assert {row.qtype: row.native for row in ROWS if row.native} == native.SYMBOLS
    assert list(gguf_types.TYPE_NAMES) == [row.key for row in WRITTEN]
    assert set(gguf_types.DEFAULT_TYPE.values()) == written
    assert set(gguf_types.FILE_TYPE_OF) == written
    # The mixes named by the rows are the file types gguf-export writes, and nothing else.
    assert sorted(gguf_types.FILE_TYPE_NAMES) == sorted(
        {name for row in WRITTEN for name in row.file_types} | {row.key for row in WRITTEN if row.file_type}
    )


@pytest.mark.parametrize("qtype", [t for t in GGMLQuantizationType if t.name not in types.TYPES], ids=str)
def test_types_outside_the_table_are_refused(qtype: GGMLQuantizationType) -> None:
    with pytest.raises(ValueError, match="unknown tensor type"):
        gguf_types.parse_tensor_type(qtype.name)
    with pytest.raises(UnsupportedError, match=qtype.name):
        types.get(qtype)


def _option_help(option: str) -> str:
    command = typer.main.get_command(app).commands["gguf-export"]  # type: ignore[attr-defined]
    return next(p.help for p in command.params if option in p.opts)


def _names(text: str) -> list[str]:
    return re.findall(r"\b(?:auto|[a-z]+\d+(?:_\d+)?(?:_[a-z]+)*)\b", text)


def test_cli_help_lists_exactly_the_writable_types() -> None:
    tensor_types = _names(_option_help("--output-type"))
    assert tensor_types == [row.key for row in WRITTEN]
    listed, _, aliases = _option_help("--type").partition("(")
    assert _names(listed) == ["auto", *(name for row in WRITTEN for name in row.file_types)]
    assert _names(aliases) == [name for row in WRITTEN if row.file_type for name in (row.key, row.file_type)]
    # and the rendered --help shows that text (rich wraps it to the terminal's width)
    shown = " ".join(run_mtk("gguf-export", "--help", env={"COLUMNS": "400"}).stdout.split())
    assert ", ".join(tensor_types) in shown


def test_reading_the_table_imports_neither_torch_nor_gguf() -> None:
    code = "import sys, mtk.kernels.types as t; list(t.rows()); print(sorted({'torch', 'gguf'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
