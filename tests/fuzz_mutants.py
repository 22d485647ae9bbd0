"""Seeded mutants of mtk's inputs (GGUF, safetensors, config/tokenizer JSON, imatrix, calibration text) and the
rule every reader must keep: a mutant is read, or refused with one ``MtkError`` line of its own exit code.

Shared by ``tests/test_fuzz.py`` (a few hundred cases) and ``scripts/fuzz.py`` (long runs). Every mutant is
a pure function of ``(seed, kind)`` and the original bytes, so a crash is replayed from its seed alone.

The GGUF mutators work on a map of the header's fields (:func:`gguf_fields`), so that a "huge count" lands on
a count and a "dims that overflow" on a dimension, not on a random byte: random bytes mostly hit strings.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# GGUF value types (the spec's numbering) and the byte size of each scalar one.
GGUF_STRING, GGUF_ARRAY = 8, 9
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
HUGE_U64 = (1 << 64) - 1, 1 << 63, 1 << 62, 1 << 40, 1 << 32, (1 << 32) - 1, 1 << 31


@dataclass(frozen=True)
class Field:
    """One header field of a GGUF: what it is (``kind``), where it lies and its width in bytes."""

    # tensor_count, kv_count, kv (a whole item), key_len, key, vtype, value (type and value), str_len, str,
    # array_type, array_count, scalar, name_len, name, n_dims, dim, ggml_type, offset
    kind: str
    offset: int
    size: int
    context: str = ""  # the metadata key or tensor name it belongs to


def gguf_fields(data: bytes) -> tuple[list[Field], int]:
    """The fields of a well-formed GGUF header, and where the header ends (before the alignment padding)."""
    fields: list[Field] = []
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    fields += [Field("tensor_count", 8, 8), Field("kv_count", 16, 8)]

    def string(kind: str, context: str = "") -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", data, pos)
        text = data[pos + 8 : pos + 8 + n].decode("utf-8", "replace")
        fields.append(Field(kind + "_len", pos, 8, context or text))
        fields.append(Field(kind, pos + 8, n, context or text))
        return text, pos + 8 + n

    def value(vtype: int, at: int, key: str) -> int:
        nonlocal pos
        if vtype == GGUF_STRING:
            pos = at
            _, pos = string("str", key)
            return pos
        if vtype == GGUF_ARRAY:
            item, count = struct.unpack_from("<IQ", data, at)
            fields.append(Field("array_type", at, 4, key))
            fields.append(Field("array_count", at + 4, 8, key))
            at += 12
            for _ in range(count):
                at = value(item, at, key)
            return at
        fields.append(Field("scalar", at, _SCALAR_SIZES[vtype], key))
        return at + _SCALAR_SIZES[vtype]

    for _ in range(n_kv):
        start = pos
        key, pos = string("key")
        (vtype,) = struct.unpack_from("<I", data, pos)
        fields.append(Field("vtype", pos, 4, key))
        value_at = pos
        pos = value(vtype, pos + 4, key)
        fields.append(Field("kv", start, pos - start, key))
        fields.append(Field("value", value_at, pos - value_at, key))
    for _ in range(n_tensors):
        name, pos = string("name")
        (n_dims,) = struct.unpack_from("<I", data, pos)
        fields.append(Field("n_dims", pos, 4, name))
        pos += 4
        for d in range(n_dims):
            fields.append(Field("dim", pos + 8 * d, 8, name))
        pos += 8 * n_dims
        fields.append(Field("ggml_type", pos, 4, name))
        fields.append(Field("offset", pos + 4, 8, name))
        pos += 12
    return fields, pos


def _put(buf: bytearray, f: Field, value: int) -> None:
    buf[f.offset : f.offset + f.size] = (value % (1 << (8 * f.size))).to_bytes(f.size, "little")


def _pick(rng: random.Random, fields: list[Field], *kinds: str) -> Field:
    chosen = [f for f in fields if f.kind in kinds and f.size]
    return rng.choice(chosen)


class GGUFMutator:
    """Mutants of one GGUF file; ``KINDS`` names each mutation."""

    KINDS = (
        "bit_flip",
        "byte_overwrite",
        "huge_count",
        "huge_length",
        "dim_overflow",
        "zero_dim",
        "duplicate_name",
        "unknown_type",
        "wrong_value_type",
        "scalar_value",
        "key_rename",
        "bad_alignment",
        "tensor_offset",
        "nested_array",
        "non_utf8",
        "truncate",
        "retype",
        "drop_key",
    )
    # Values of every GGUF type (type, encoded value) that "retype" puts in place of a key's own.
    VALUES = (
        struct.pack("<I", GGUF_STRING) + struct.pack("<Q", 3) + b"abc",
        struct.pack("<I", GGUF_STRING) + struct.pack("<Q", 2) + b"\xff\xfe",
        struct.pack("<I", GGUF_STRING) + struct.pack("<Q", 0),
        struct.pack("<If", 6, 2.5),
        struct.pack("<If", 6, float("nan")),
        struct.pack("<Id", 12, 1e300),
        struct.pack("<Ii", 5, -1),
        struct.pack("<II", 4, 0),
        struct.pack("<IQ", 10, (1 << 64) - 1),
        struct.pack("<I?", 7, True),
        struct.pack("<IIQ", GGUF_ARRAY, 4, 0),
        struct.pack("<IIQII", GGUF_ARRAY, 4, 2, 64, 64),
        struct.pack("<IIQ", GGUF_ARRAY, GGUF_STRING, 1) + struct.pack("<Q", 1) + b"x",
        struct.pack("<IIQ", GGUF_ARRAY, GGUF_ARRAY, 1) + struct.pack("<IQ", 4, 0),
    )

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fields, self.header_end = gguf_fields(data)
        self.hparams = [f for f in self.fields if f.kind == "scalar" and "." in f.context]

    def mutate(self, seed: int, kind: str) -> bytes:
        rng = random.Random(f"{seed}:{kind}")
        buf = bytearray(self.data)
        getattr(self, "_" + kind)(rng, buf)
        return bytes(buf)

    def _bit_flip(self, rng: random.Random, buf: bytearray) -> None:
        for _ in range(rng.choice((1, 1, 2, 4, 16))):
            i = rng.randrange(self.header_end)
            buf[i] ^= 1 << rng.randrange(8)

    def _byte_overwrite(self, rng: random.Random, buf: bytearray) -> None:
        i = rng.randrange(self.header_end)
        n = rng.choice((1, 2, 4, 8))
        buf[i : i + n] = bytes(rng.choice((0, 0xFF, rng.randrange(256))) for _ in range(n))

    def _huge_count(self, rng: random.Random, buf: bytearray) -> None:
        f = _pick(rng, self.fields, "tensor_count", "kv_count", "array_count", "n_dims")
        _put(buf, f, rng.choice((*HUGE_U64, len(buf), len(buf) // 4, 0)))

    def _huge_length(self, rng: random.Random, buf: bytearray) -> None:
        f = _pick(rng, self.fields, "key_len", "str_len", "name_len")
        old = int.from_bytes(buf[f.offset : f.offset + 8], "little")
        _put(buf, f, rng.choice((*HUGE_U64, len(buf), old + 1, max(old - 1, 0), 0)))

    def _dim_overflow(self, rng: random.Random, buf: bytearray) -> None:
        for _ in range(rng.choice((1, 2))):
            _put(buf, _pick(rng, self.fields, "dim"), rng.choice(HUGE_U64))

    def _zero_dim(self, rng: random.Random, buf: bytearray) -> None:
        _put(buf, _pick(rng, self.fields, "dim"), rng.choice((0, 1, 3)))

    def _duplicate_name(self, rng: random.Random, buf: bytearray) -> None:
        # Copy a name (or key) over another of the same length: the file stays well-formed.
        kind = rng.choice(("name", "key"))
        by_len: dict[int, list[Field]] = {}
        for f in self.fields:
            if f.kind == kind:
                by_len.setdefault(f.size, []).append(f)
        pairs = [v for v in by_len.values() if len(v) > 1]
        if not pairs:  # no two names of one length (an imatrix): overwrite the second with the first, cut
            pairs = [[f for f in self.fields if f.kind == kind]]
        a, b = rng.sample(rng.choice(pairs), 2)
        buf[b.offset : b.offset + b.size] = self.data[a.offset : a.offset + min(a.size, b.size)].ljust(b.size, b"_")

    def _unknown_type(self, rng: random.Random, buf: bytearray) -> None:
        f = _pick(rng, self.fields, "vtype", "array_type", "ggml_type")
        _put(buf, f, rng.choice((13, 14, 39, 40, 1000, 0xFFFFFFFF, rng.randrange(1 << 32))))

    def _wrong_value_type(self, rng: random.Random, buf: bytearray) -> None:
        # A scalar re-typed as another of the same width: the bytes still parse, the meaning is wrong.
        f = _pick(rng, self.fields, "vtype")
        old = int.from_bytes(buf[f.offset : f.offset + 4], "little")
        same = [t for t, s in _SCALAR_SIZES.items() if s == _SCALAR_SIZES.get(old) and t != old]
        _put(buf, f, rng.choice(same or list(_SCALAR_SIZES)))

    def _scalar_value(self, rng: random.Random, buf: bytearray) -> None:
        f = rng.choice(self.hparams or [f for f in self.fields if f.kind == "scalar"])
        _put(buf, f, rng.choice((0, 1, 3, (1 << (8 * f.size)) - 1, 1 << (8 * f.size - 1), 0x7F800000, 0x7FC00000)))

    def _key_rename(self, rng: random.Random, buf: bytearray) -> None:
        # One changed byte in a key: a required key goes missing (and an unknown one appears).
        f = _pick(rng, self.fields, "key")
        i = f.offset + rng.randrange(f.size)
        buf[i] = rng.choice(b"xyz_.")

    def _bad_alignment(self, rng: random.Random, buf: bytearray) -> None:
        # Rename a u32 key to general.alignment (same length keys only), or retype a scalar to it.
        target = b"general.alignment"
        keys = [f for f in self.fields if f.kind == "key" and f.size == len(target)]
        if not keys:  # no key of that length: give the first key an alignment value of its own type
            self._scalar_value(rng, buf)
            return
        u32 = [
            f for f in keys if int.from_bytes(self.data[f.offset + f.size : f.offset + f.size + 4], "little") in (4, 5)
        ]
        f = rng.choice(u32 or keys)
        buf[f.offset : f.offset + f.size] = target
        if u32:
            _put(buf, Field("scalar", f.offset + f.size + 4, 4), rng.choice((0, 1, 3, 31, 33, 1 << 31, (1 << 32) - 1)))

    def _tensor_offset(self, rng: random.Random, buf: bytearray) -> None:
        f = _pick(rng, self.fields, "offset")
        old = int.from_bytes(buf[f.offset : f.offset + 8], "little")
        _put(buf, f, rng.choice((old + 1, old + 32, old - 32, len(buf), *HUGE_U64)))

    def _nested_array(self, rng: random.Random, buf: bytearray) -> None:
        # Replace the file after the first key's type with arrays of arrays, deeper than any stack.
        f = _pick(rng, self.fields, "vtype")
        depth = rng.choice((3, 100, 5000, 100_000))
        nest = struct.pack("<IIQ", GGUF_ARRAY, GGUF_ARRAY, 1) + struct.pack("<IQ", GGUF_ARRAY, 1) * depth
        buf[f.offset :] = nest + struct.pack("<IQ", 4, 0)

    def _non_utf8(self, rng: random.Random, buf: bytearray) -> None:
        f = _pick(rng, self.fields, "key", "name", "str")
        i = f.offset + rng.randrange(f.size)
        buf[i] = rng.choice((0x80, 0xC3, 0xFF, 0xED))
        if rng.random() < 0.5 and f.size > 1:
            buf[f.offset] = 0

    def _rebuild(self, buf: bytearray, at: Field, replacement: bytes) -> None:
        """Replace one field and move the data section to the next aligned offset after the new header."""
        align = 32  # the exporter writes no general.alignment: llama.cpp's default
        header = self.data[: at.offset] + replacement + self.data[at.offset + at.size : self.header_end]
        header += b"\0" * (-len(header) % align)
        buf[:] = header + self.data[-(-self.header_end // align) * align :]

    def _retype(self, rng: random.Random, buf: bytearray) -> None:
        f = rng.choice([f for f in self.fields if f.kind == "value"])
        self._rebuild(buf, f, rng.choice(self.VALUES))

    def _drop_key(self, rng: random.Random, buf: bytearray) -> None:
        f = rng.choice([f for f in self.fields if f.kind == "kv"])
        self._rebuild(buf, f, b"")
        buf[16:24] = (int.from_bytes(buf[16:24], "little") - 1).to_bytes(8, "little")

    def _truncate(self, rng: random.Random, buf: bytearray) -> None:
        cut = rng.choice((rng.randrange(len(buf)), rng.randrange(self.header_end), self.header_end))
        del buf[cut:]


class SafetensorsMutator:
    """Mutants of one safetensors file: its JSON header rewritten (lying entries) or its raw bytes broken."""

    KINDS = (
        "dtype",
        "shape_value",
        "shape_vs_offsets",
        "offsets",
        "overlap",
        "header_length",
        "nesting",
        "non_utf8",
        "bit_flip",
        "entry_type",
        "metadata",
        "name",
    )
    BAD_NUMBERS = (0, -1, 1 << 62, 1 << 64, 1e400, -1e400, 1.5, "4", None, True, [2], {"a": 1})

    def __init__(self, data: bytes) -> None:
        self.data = data
        (n,) = struct.unpack_from("<Q", data)
        self.header = json.loads(data[8 : 8 + n])
        self.body = data[8 + n :]
        self.names = [k for k in self.header if k != "__metadata__"]

    def mutate(self, seed: int, kind: str) -> bytes:
        rng = random.Random(f"{seed}:{kind}")
        raw = getattr(self, "_" + kind)(rng)
        return raw if isinstance(raw, bytes) else self._pack(raw)

    def _pack(self, header: object, body: bytes | None = None) -> bytes:
        blob = json.dumps(header, separators=(",", ":"), allow_nan=True).encode()
        blob += b" " * (-len(blob) % 8)
        return struct.pack("<Q", len(blob)) + blob + (self.body if body is None else body)

    def _entry(self, rng: random.Random) -> tuple[dict, dict]:
        header = json.loads(json.dumps(self.header))
        return header, header[rng.choice(self.names)]

    def _dtype(self, rng: random.Random) -> dict:
        header, e = self._entry(rng)
        e["dtype"] = rng.choice(("F8", "F4", "I4", "U1", "", "f32", "BF16", "F64", "BOOL", "F8_E4M3", 3, None))
        return header

    def _shape_value(self, rng: random.Random) -> dict:
        header, e = self._entry(rng)
        shape = list(e["shape"]) or [1]
        shape[rng.randrange(len(shape))] = rng.choice(self.BAD_NUMBERS)
        e["shape"] = rng.choice((shape, [], [0], [1 << 31, 1 << 31], "64", None, [[64]], [1] * 100))
        return header

    def _shape_vs_offsets(self, rng: random.Random) -> dict:
        # A shape that agrees with the byte count but not with the model (or vice versa).
        header, e = self._entry(rng)
        n = 1
        for d in e["shape"]:
            n *= d
        e["shape"] = rng.choice(([n], [1, n], [n, 1], list(reversed(e["shape"])), [0, n], [1 << 62]))
        return header

    def _offsets(self, rng: random.Random) -> dict:
        header, e = self._entry(rng)
        begin, end = e["data_offsets"]
        e["data_offsets"] = rng.choice(
            (
                [end, begin],
                [begin, end + 4],
                [begin + len(self.body), end + len(self.body)],
                [rng.choice(self.BAD_NUMBERS), end],
                [begin, rng.choice(self.BAD_NUMBERS)],
                [begin],
                [begin, end, 0],
                "0,4",
            )
        )
        return header

    def _overlap(self, rng: random.Random) -> dict:
        header = json.loads(json.dumps(self.header))
        a, b = rng.sample(self.names, 2)
        header[b]["data_offsets"] = list(header[a]["data_offsets"])
        header[b]["shape"], header[b]["dtype"] = header[a]["shape"], header[a]["dtype"]
        return header

    def _header_length(self, rng: random.Random) -> bytes:
        n = rng.choice((len(self.data), len(self.data) - 7, 1 << 63, (1 << 64) - 1, 0, 1, 7))
        return struct.pack("<Q", n) + self.data[8:]

    def _nesting(self, rng: random.Random) -> bytes:
        depth = rng.choice((100, 10_000, 100_000))
        blob = rng.choice((b"[" * depth, b'{"a":' * depth, b"[" * depth + b"]" * depth))
        return struct.pack("<Q", len(blob)) + blob

    def _non_utf8(self, rng: random.Random) -> bytes:
        (n,) = struct.unpack_from("<Q", self.data)
        buf = bytearray(self.data)
        i = 8 + rng.randrange(n)
        buf[i] = rng.choice((0x80, 0xC3, 0xFF))
        return bytes(buf)

    def _bit_flip(self, rng: random.Random) -> bytes:
        (n,) = struct.unpack_from("<Q", self.data)
        buf = bytearray(self.data)
        for _ in range(rng.choice((1, 2, 8))):
            i = rng.randrange(8 + n)
            buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf)

    def _entry_type(self, rng: random.Random) -> dict:
        header = json.loads(json.dumps(self.header))
        header[rng.choice(self.names)] = rng.choice((None, [], "x", 1, {"dtype": "F32"}))
        return header

    def _name(self, rng: random.Random) -> dict:
        # A tensor renamed: control characters, a newline, a huge name, an empty one (messages must stay one line).
        header = json.loads(json.dumps(self.header))
        old = rng.choice(self.names)
        new = rng.choice(("a\nb", "\x1b[31mred", "", "x" * 100_000, old + "\r\n", "\u202e" + old, "layers.9.x"))
        header[new] = header.pop(old)
        return header

    def _metadata(self, rng: random.Random) -> dict:
        header = json.loads(json.dumps(self.header))
        header["__metadata__"] = rng.choice(([], "pt", 1, {"format": 3}, {"format": None}))
        return header


def mutate_json(original: object, seed: int) -> object:
    """A JSON document with one value replaced, removed or re-typed, anywhere in its tree."""
    rng = random.Random(seed)
    doc = json.loads(json.dumps(original))
    paths: list[tuple[object, object]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((node, k))
                walk(v)
        elif isinstance(node, list):
            for i, v in enumerate(node[:50]):
                paths.append((node, i))
                walk(v)

    walk(doc)
    if not paths or rng.random() < 0.05:
        return rng.choice(([], "x", None, 1))
    parent, key = rng.choice(paths)
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[key]
    else:
        parent[key] = rng.choice((0, -1, 1 << 62, 1e300, 0.5, "abc", "", None, True, [], {}, [1, 2], {"x": []}))
    return doc


def json_bytes_mutant(original: bytes, seed: int) -> bytes:
    """A JSON file broken as bytes: truncated, non-UTF-8, or nested past any parser's stack."""
    rng = random.Random(seed)
    kind = rng.randrange(4)
    if kind == 0:
        return original[: rng.randrange(len(original))]
    if kind == 1:
        buf = bytearray(original)
        buf[rng.randrange(len(buf))] = 0xFF
        return bytes(buf)
    if kind == 2:
        return b"[" * 100_000
    return b'{"a":' + b"[" * 100_000


def calibration_mutant(seed: int) -> tuple[str, bytes]:
    """A calibration file (suffix, bytes) that is empty, not text, or not the JSON lines it claims."""
    rng = random.Random(seed)
    return rng.choice(
        (
            (".txt", b""),
            (".txt", b"\xff\xfe\x00bad"),
            (".txt", b"\n\n\n"),
            (".jsonl", b'{"text": 3}\n'),
            (".jsonl", b"not json\n"),
            (".jsonl", b'{"other": "x"}\n'),
            (".jsonl", b"[" * 100_000 + b"\n"),
            (".jsonl", b'"just a string"\n'),
            (".parquet", b"PAR1garbage"),
        )
    )


Mutant = Callable[[int, str], bytes]


# --- running mutants ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one call did: ``ok`` (read), ``clean`` (one MtkError line, exit code >= 2) or ``crash``."""

    status: str
    detail: str = ""


def run_case(call: Callable[[], object]) -> Outcome:
    """Call a reader on a mutant. A crash is any other exception, the exit-1 MtkError (an internal error), or a
    message that is not one printable line."""
    from mtk.errors import MtkError

    try:
        call()
    except MtkError as exc:
        text = str(exc)
        if exc.exit_code == 1 or not text or not text.isprintable():
            return Outcome("crash", f"{type(exc).__name__}(exit {exc.exit_code}): {text[:200]!r}")
        return Outcome("clean", f"exit {exc.exit_code}")
    except BaseException as exc:  # noqa: BLE001 - a pyo3 panic is a BaseException; KeyboardInterrupt passes
        if isinstance(exc, KeyboardInterrupt):
            raise
        return Outcome("crash", f"{type(exc).__name__}: {str(exc)[:200]!r}")
    return Outcome("ok")


@dataclass(frozen=True)
class Fixtures:
    """The originals: an HF folder (tiny llama), GGUFs exported from it, an imatrix, and a scratch folder."""

    hf: Path
    gguf: dict[str, Path]  # label -> file, e.g. {"f32": ..., "q4_k_m": ..., "spm": ...}
    imatrix: Path
    work: Path


@dataclass(frozen=True)
class Case:
    reader: str  # which input and which entry point: "gguf-f32/import", "safetensors/quantize", ...
    kind: str
    seed: int
    call: Callable[[], object]


def build_fixtures(hf: Path, spm_hf: Path, work: Path) -> Fixtures:
    """GGUFs (f32, q4_k_m, an SPM-tokenizer one) and an imatrix of the tiny checkpoints, written to ``work``."""
    import mtk

    work.mkdir(parents=True, exist_ok=True)
    ggufs = {"f32": work / "tiny-f32.gguf", "q4_k_m": work / "tiny-q4_k_m.gguf", "spm": work / "tiny-spm.gguf"}
    for label, path in ggufs.items():
        if not path.exists():
            src, kind = (spm_hf, "f32") if label == "spm" else (hf, label)
            mtk.gguf_export(src, path, type=kind, verify=False)
    imatrix = work / "tiny.imatrix.gguf"
    if not imatrix.exists():
        calib = work / "calib.txt"
        calib.write_text("The quick brown fox jumps over the lazy dog. " * 20)
        mtk.imatrix(hf, calib, imatrix, samples=2, seq_len=16, device="cpu")
    return Fixtures(hf, ggufs, imatrix, work)


def _folder_with(fx: Fixtures, name: str, data: bytes, slot: str) -> Path:
    """A copy of the HF folder (links, but for ``name``) with ``name`` replaced by ``data``."""
    folder = fx.work / f"hf-{slot}"
    if not folder.exists():
        folder.mkdir()
        for f in fx.hf.iterdir():
            (folder / f.name).symlink_to(f.resolve())
    for f in fx.hf.iterdir():  # restore what the previous case replaced
        if not (folder / f.name).is_symlink():
            (folder / f.name).unlink()
            (folder / f.name).symlink_to(f.resolve())
    target = folder / name
    target.unlink()
    target.write_bytes(data)
    return folder


def iter_cases(fx: Fixtures, seeds: range, readers: tuple[str, ...] | None = None) -> Iterator[Case]:
    """Every reader x mutation kind x seed; each case's mutant is written just before its call runs."""
    import mtk
    from mtk.converters.imatrix import read_imatrix

    out, out_gguf = fx.work / "out", fx.work / "out.gguf"
    mutant = fx.work / "mutant.gguf"

    def wanted(name: str) -> bool:
        return readers is None or any(name.startswith(r) for r in readers)

    def gguf_case(label: str, kind: str, seed: int, m: GGUFMutator) -> Callable[[], object]:
        def call() -> object:
            mutant.write_bytes(m.mutate(seed, kind))
            mtk.inspect(mutant)
            return mtk.gguf_import(mutant, out, verify=False, overwrite=True, device="cpu")

        return call

    for label, path in fx.gguf.items():
        if not wanted(f"gguf-{label}"):
            continue
        m = GGUFMutator(path.read_bytes())
        for kind in m.KINDS:
            for seed in seeds:
                yield Case(f"gguf-{label}/import", kind, seed, gguf_case(label, kind, seed, m))

    if wanted("gguf-retype"):
        m = GGUFMutator(fx.gguf["f32"].read_bytes())
        for kind in m.KINDS:
            for seed in seeds:

                def retype(kind: str = kind, seed: int = seed) -> object:
                    mutant.write_bytes(m.mutate(seed, kind))
                    return mtk.gguf_export(mutant, dry_run=True, type="q8_0")

                yield Case("gguf-retype/export-dry-run", kind, seed, retype)

    if wanted("imatrix"):
        m = GGUFMutator(fx.imatrix.read_bytes())
        for kind in m.KINDS:
            for seed in seeds:

                def imat(kind: str = kind, seed: int = seed) -> object:
                    mutant.write_bytes(m.mutate(seed, kind))
                    return read_imatrix(mutant)

                yield Case("imatrix/read", kind, seed, imat)

    if wanted("safetensors"):
        st = SafetensorsMutator((fx.hf / "model.safetensors").read_bytes())
        for kind in st.KINDS:
            for seed in seeds:

                def tensors(kind: str = kind, seed: int = seed) -> object:
                    folder = _folder_with(fx, "model.safetensors", st.mutate(seed, kind), "st")
                    mtk.inspect(folder)
                    mtk.gguf_export(folder, dry_run=True)
                    mtk.gguf_export(folder, out_gguf, type="q8_0", verify=False, overwrite=True, device="cpu")
                    return mtk.quantize(
                        folder, out, method="rtn", group_size=32, verify=False, overwrite=True, device="cpu"
                    )

                yield Case("safetensors/inspect+export+quantize", kind, seed, tensors)

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if not wanted(name):
            continue
        original = (fx.hf / name).read_bytes()
        doc = json.loads(original)
        for kind in ("value", "bytes"):
            for seed in seeds:

                def config(
                    name: str = name, kind: str = kind, seed: int = seed, original: bytes = original, doc: object = doc
                ) -> object:
                    data = json_bytes_mutant(original, seed) if kind == "bytes" else json.dumps(mutate_json(doc, seed))
                    folder = _folder_with(fx, name, data if isinstance(data, bytes) else data.encode(), "json")
                    mtk.gguf_export(folder, out_gguf, type="q8_0", verify=False, overwrite=True, device="cpu")
                    return mtk.quantize(
                        folder, out, method="rtn", group_size=32, verify=False, overwrite=True, device="cpu"
                    )

                yield Case(f"{name}/export+quantize", kind, seed, config)

    if wanted("calibration"):
        for seed in seeds:

            def calibration(seed: int = seed) -> object:
                suffix, data = calibration_mutant(seed)
                path = fx.work / f"calibration{suffix}"
                path.write_bytes(data)
                return mtk.imatrix(fx.hf, path, out, samples=2, seq_len=16, device="cpu", overwrite=True)

            yield Case("calibration/imatrix", "file", seed, calibration)
