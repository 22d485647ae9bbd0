"""Streaming keeps memory at one tensor: measured as peak RSS of a child process, never as time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from mtk.formats.gguf_writer import write_gguf
from mtk.formats.safetensors_io import SafetensorsWriter

MiB = 1 << 20


def child_peak_mib(script: str) -> dict:
    """Run ``script`` in a fresh interpreter; it prints one JSON object."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_iteration_peak_is_one_tensor_not_the_model(tmp_path: Path) -> None:
    # 4 shards x 4 tensors x 16 MiB = 256 MiB of float32.
    plan = [(f"layer.{i}.weight", torch.float32, (2048, 2048)) for i in range(16)]
    with SafetensorsWriter(tmp_path, plan, max_shard_bytes=64 * MiB) as w:
        for name, _, shape in plan:
            w.write(name, torch.full(shape, float(len(name))))
    assert len(list(tmp_path.glob("*.safetensors"))) == 4
    result = child_peak_mib(
        f"""
        import json, resource
        import torch
        from mtk.formats.checkpoint import HFCheckpoint
        def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ckpt = HFCheckpoint({str(tmp_path)!r})
        base = peak()
        total = 0.0
        for name, t in ckpt:
            total += float(t.sum())
        print(json.dumps({{"delta": peak() - base, "total": total}}))
        """
    )
    assert result["total"] == pytest.approx(sum(len(n) * 2048 * 2048 for n, _, _ in plan), rel=1e-6)
    # The largest shard is 64 MiB, the model 256 MiB: iteration stays near one 16 MiB tensor.
    assert result["delta"] < 48, result


def _wide_llama_gguf(path: Path, n_layers: int, tokenizer_meta: dict) -> int:
    """A llama GGUF of width 512 with F16 weights; returns its float32 size in bytes."""
    rng = np.random.default_rng(n_layers)
    d, ff, vocab = 512, 1536, len(tokenizer_meta["tokenizer.ggml.tokens"])
    meta = {
        "general.architecture": "llama",
        "llama.context_length": 512,
        "llama.embedding_length": d,
        "llama.block_count": n_layers,
        "llama.feed_forward_length": ff,
        "llama.attention.head_count": 8,
        "llama.attention.head_count_kv": 8,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.freq_base": 10000.0,
        **tokenizer_meta,
    }

    def f16(*shape: int) -> tuple:
        return (gguf.GGMLQuantizationType.F16, (rng.standard_normal(shape) * 0.02).astype(np.float16))

    norm = (gguf.GGMLQuantizationType.F32, np.ones(d, np.float32))
    tensors = {"token_embd.weight": f16(vocab, d), "output_norm.weight": norm}
    for i in range(n_layers):
        tensors[f"blk.{i}.attn_norm.weight"] = norm
        tensors[f"blk.{i}.ffn_norm.weight"] = norm
        for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensors[f"blk.{i}.{n}.weight"] = f16(d, d)
        tensors[f"blk.{i}.ffn_gate.weight"] = f16(ff, d)
        tensors[f"blk.{i}.ffn_up.weight"] = f16(ff, d)
        tensors[f"blk.{i}.ffn_down.weight"] = f16(d, ff)
    write_gguf(path, meta, tensors)
    return sum(t.size * 4 for _, t in tensors.values())


def test_gguf_import_peak_does_not_grow_with_the_model(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from mtk.converters.tokenizer import gguf_tokenizer_metadata

    tok = gguf_tokenizer_metadata(tiny_models["llama"])
    warm = tmp_path / "warm.gguf"
    _wide_llama_gguf(warm, 1, tok)
    deltas, sizes = {}, {}
    for n_layers in (2, 16):
        path = tmp_path / f"l{n_layers}.gguf"
        sizes[n_layers] = _wide_llama_gguf(path, n_layers, tok)
        deltas[n_layers] = child_peak_mib(
            f"""
            import json, resource
            from mtk.converters.gguf_to_hf import gguf_import
            def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            gguf_import({str(warm)!r}, {str(tmp_path / "warm-out")!r}, dtype="f32", overwrite=True)
            base = peak()
            gguf_import({str(path)!r}, {str(tmp_path / "out")!r}, dtype="f32", overwrite=True)
            print(json.dumps({{"delta": peak() - base}}))
            """
        )["delta"]
    grown_model = (sizes[16] - sizes[2]) / MiB
    assert grown_model > 150
    # Fourteen more layers (~170 MiB more float32 weights) may not cost more than a few layers' tensors.
    assert deltas[16] - deltas[2] < 0.15 * grown_model, (deltas, grown_model)
    assert deltas[16] < 0.25 * sizes[16] / MiB, (deltas, sizes)
