"""Faults while writing: signals, a killed process, a full disk, a read-only folder, two runs on one output;
names from files that try to leave the output folder; chat templates and pickles that try to run code.

The signal tests run the real console script (``python -m mtk``) on a checkpoint wide enough that its
temporary output lives for a second or more, and send the signal once that temporary exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import run_mtk
from fixtures_models import build_tiny_model

from mtk.errors import InvalidFileError, OutputError, UnsupportedError
from mtk.formats.atomic import atomic_dir, atomic_file, sweep, temporary_names


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama of 17M parameters (65 MB in float32): every writing command keeps its temporary for > 1 s."""
    return build_tiny_model(
        "llama", tmp_path_factory.mktemp("wide") / "hf", hidden_size=512, intermediate_size=2048, num_hidden_layers=4
    )


@pytest.fixture(scope="module")
def wide_gguf(wide: Path) -> Path:
    path = wide.parent / "wide.f16.gguf"
    proc = run_mtk("gguf-export", str(wide), "-o", str(path), "--type", "f16", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    return path


def _snapshot(path: Path) -> dict[str, str]:
    """Relative name -> sha256 of every file under ``path`` (or of ``path`` itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _old_output(output: Path) -> dict[str, str]:
    """Something already at ``output`` that an interrupted run must leave exactly as it was."""
    if output.suffix == ".gguf":
        output.write_bytes(b"the old artifact\n" * 1000)
    else:
        output.mkdir()
        (output / "old.txt").write_text("the old artifact\n")
    return _snapshot(output)


def _default_signals() -> None:
    # A job a non-interactive shell starts in the background (`cmd &`, as some CI runners start the suite) inherits
    # SIGINT ignored, and mtk keeps a signal its process was started with ignored (as `nohup` users expect):
    # give the command the default actions, as a shell in the foreground does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(args: list[str]) -> subprocess.Popen[str]:
    # Started with the default actions of SIGINT and SIGTERM, as from a shell in the foreground.
    return subprocess.Popen(
        [sys.executable, "-m", "mtk", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_signals,
    )  # fmt: skip


def _signal_when_writing(proc: subprocess.Popen[str], output: Path, signum: int) -> tuple[int, str]:
    """Send ``signum`` as soon as ``output``'s temporary exists; the exit status and stderr."""
    return _signal_when(proc, lambda: bool(temporary_names(output)), signum)


def _signal_when(proc: subprocess.Popen[str], ready: Callable[[], bool], signum: int) -> tuple[int, str]:
    deadline = time.monotonic() + 300
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the command ended ({proc.returncode}) too early: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the command was not ready for the signal in 300 s")
        time.sleep(0.01)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


COMMANDS = {
    "gguf-export": lambda src, gguf, out: ["gguf-export", str(src), "-o", str(out), "--type", "f32"],
    "gguf-import": lambda src, gguf, out: ["gguf-import", str(gguf), "-o", str(out)],
    "quantize": lambda src, gguf, out: ["quantize", str(src), "-o", str(out), "--method", "rtn"],
    "export-onnx": lambda src, gguf, out: ["export-onnx", str(src), "-o", str(out)],
}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_signal_keeps_old_output_and_exits_128_plus_signal(
    command: str, signum: int, wide: Path, wide_gguf: Path, tmp_path: Path
) -> None:
    output = tmp_path / ("out.gguf" if command == "gguf-export" else "out")
    before = _old_output(output)
    proc = _start([*COMMANDS[command](wide, wide_gguf, output), "--overwrite"])
    code, err = _signal_when_writing(proc, output, signum)
    assert code == 128 + signum, err[-2000:]
    assert f"interrupted ({signal.Signals(signum).name})" in err
    assert _snapshot(output) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]  # no temporary, nothing moved aside


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_imatrix_computes(signum: int, wide: Path, tmp_path: Path) -> None:
    """imatrix writes its file only at the end: the signal comes while it runs the model (once it has mapped the
    weights), and the old file stays."""
    calibration = tmp_path / "calib.txt"
    calibration.write_text(" ".join(["the cat sat on a mat and the dog ran far"] * 2000))
    output = tmp_path / "out.gguf"
    before = _old_output(output)
    args = ["imatrix", str(wide), "--calibration", str(calibration), "-o", str(output), "--samples", "8"]
    proc = _start([*args, "--overwrite"])
    maps = Path(f"/proc/{proc.pid}/maps")
    code, err = _signal_when(proc, lambda: "model.safetensors" in maps.read_text(), signum)
    assert code == 128 + signum, err[-2000:]
    assert _snapshot(output) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "out.gguf"]


def test_sigkill_leaves_only_a_prefixed_temporary_which_the_next_run_removes(wide: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.gguf"
    before = _old_output(output)
    args = ["gguf-export", str(wide), "-o", str(output), "--type", "f32", "--overwrite"]
    code, _ = _signal_when_writing(_start(args), output, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert _snapshot(output) == before
    left = sorted(p.name for p in tmp_path.iterdir() if p != output)
    assert left and all(name.startswith(".mtk.out.gguf.") and name.endswith(".partial") for name in left), left
    proc = run_mtk(*args[:-1], "--no-verify", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]
    assert output.read_bytes()[:4] == b"GGUF"


def test_sweep_spares_a_live_temporary_and_restores_a_folder_moved_aside(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    dead = tmp_path / ".mtk.out.bin.abc123.partial"
    dead.write_bytes(b"left by a killed run")
    with atomic_file(target) as live:
        live.write_bytes(b"being written")
        assert dead not in temporary_names(target)  # swept when this run started
        dead.write_bytes(b"left by another killed run")
        sweep(target)
        assert temporary_names(target) == [live]  # held by this run: not touched
    assert target.read_bytes() == b"being written"
    # A swap killed between its two renames: the user's folder is under the aside name, the target missing.
    folder = tmp_path / "model"
    aside = tmp_path / ".mtk.model.old"
    aside.mkdir()
    (aside / "weights").write_text("the user's")
    with atomic_dir(folder, overwrite=True) as tmp:
        assert (folder / "weights").read_text() == "the user's"  # put back before anything else happens
        (tmp / "weights").write_text("new")
    assert (folder / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out.bin"]


@pytest.mark.parametrize("writer", [atomic_file, atomic_dir], ids=["file", "folder"])
def test_a_signal_right_after_the_temporary_is_made_leaves_nothing(
    writer: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal that lands between creating the temporary and handing it to the writer (the CLI raises it as an
    exception wherever the interpreter is): the temporary goes too. Seen once in the suite, SIGTERM during
    gguf-export left a ``.partial`` behind; here the exception is raised at the end of the creation step."""
    import mtk.formats.atomic as atomic

    def interrupted(path: Path) -> int:
        assert temporary_names(tmp_path / "out"), "the temporary exists when the signal lands"
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "_try_hold", interrupted)
    with pytest.raises(KeyboardInterrupt), writer(tmp_path / "out"):
        pytest.fail("the body must not run")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_between_the_renames_of_a_folder_swap_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtk.formats import atomic

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights").write_text("old")
    real_replace = os.replace

    def replace(src: Path, dst: Path) -> None:
        real_replace(src, dst)
        if Path(dst).name == ".mtk.model.old":
            raise KeyboardInterrupt  # a signal right after the old folder was moved aside

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), atomic_dir(folder, overwrite=True) as tmp:
        (tmp / "weights").write_text("new")
    assert (folder / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (mounting needs root, as in the test container)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_full_disk_exits_7_and_removes_the_partial_output(
    command: str, small_disk: Path, wide: Path, wide_gguf: Path
) -> None:
    output = small_disk / ("out.gguf" if command == "gguf-export" else "out")
    before = _old_output(output)
    proc = run_mtk(*COMMANDS[command](wide, wide_gguf, output), "--overwrite")
    assert proc.returncode == OutputError.exit_code, proc.stderr
    assert "no space left on the device" in proc.stderr
    assert _snapshot(output) == before
    assert sorted(p.name for p in small_disk.iterdir()) == [output.name]


def test_read_only_folder_exits_7(small_disk: Path, tiny_models: dict[str, Path], wide_gguf: Path) -> None:
    # Root ignores permission bits, so the folder is a read-only mount.
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for args in (
        ["gguf-export", str(tiny_models["llama"]), "-o", str(small_disk / "out.gguf"), "--type", "f32"],
        ["gguf-import", str(wide_gguf), "-o", str(small_disk / "out")],
    ):
        proc = run_mtk(*args)
        assert proc.returncode == OutputError.exit_code, proc.stderr
        assert "Read-only file system" in proc.stderr
    assert list(small_disk.iterdir()) == []


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_two_runs_on_one_output_leave_one_whole_artifact(wide: Path, tmp_path: Path) -> None:
    """Two gguf-exports of different types into the same split GGUF at once: the parts are all of one run."""
    split = ["--split-max-size", "12M"]
    refs = []
    for type_ in ("f16", "bf16"):
        out = tmp_path / type_ / "m.gguf"
        proc = run_mtk("gguf-export", str(wide), "-o", str(out), "--type", type_, *split, "--no-verify")
        assert proc.returncode == 0, proc.stderr
        refs.append(_files(out.parent))
    assert len(refs[0]) > 1 and refs[0].keys() == refs[1].keys() and refs[0] != refs[1]
    output = tmp_path / "same" / "m.gguf"
    procs = [
        _start(["gguf-export", str(wide), "-o", str(output), "--type", type_, *split, "--overwrite"])
        for type_ in ("f16", "bf16")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    assert _files(output.parent) in refs


def test_publishing_is_serialised_between_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a publishes its three files slowly; run b finishes writing meanwhile. Without the folder lock b's
    renames would land between a's, leaving a mixed set; with it b waits, and the set is all b's."""
    from mtk.formats import atomic

    targets = [tmp_path / f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    real_replace = os.replace
    a_publishing = threading.Event()

    def replace(src: Path, dst: Path) -> None:
        real_replace(src, dst)
        if threading.current_thread().name == "a":
            a_publishing.set()
            time.sleep(0.2)

    def write(tag: str) -> None:
        with atomic.atomic_files(targets, overwrite=True) as paths:
            for p in paths:
                p.write_text(tag)
            if tag == "b":
                assert a_publishing.wait(10)

    monkeypatch.setattr(atomic.os, "replace", replace)
    threads = [threading.Thread(target=write, args=(tag,), name=tag) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [t.read_text() for t in targets] == ["b", "b", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [t.name for t in targets]


def test_a_run_without_overwrite_does_not_replace_what_another_published_meanwhile(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(OutputError, match="already exists"), atomic_file(target) as first:
        first.write_bytes(b"first")
        with atomic_file(target) as second:  # started after the first, published before it
            second.write_bytes(b"second")
    assert target.read_bytes() == b"second"
    assert list(tmp_path.iterdir()) == [target]


def _safetensors_names(path: Path) -> list[str]:
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    return [k for k in json.loads(path.read_bytes()[8 : 8 + n]) if k != "__metadata__"]


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_index_shard_names_cannot_leave_the_checkpoint_folder(
    where: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """An index naming ``../outside.safetensors`` (or an absolute path) to a file that exists and would convert."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_models["llama"], ckpt)
    outside = tmp_path / "outside.safetensors"
    (ckpt / "model.safetensors").rename(outside)
    shard = "../outside.safetensors" if where == "relative" else str(outside)
    index = {"metadata": {}, "weight_map": {name: shard for name in _safetensors_names(outside)}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    for args in (["inspect", str(ckpt)], ["gguf-export", str(ckpt), "-o", str(tmp_path / "out.gguf"), "--no-verify"]):
        proc = run_mtk(*args)
        assert proc.returncode == InvalidFileError.exit_code, proc.stderr
        assert "leaves the checkpoint folder" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "outside.safetensors"]


def test_names_inside_files_are_never_paths(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """general.name and tensor names that look like paths: the outputs land where asked, nothing beside them."""
    src = tmp_path / "src" / "namename1234"  # general.name is the folder's name; patched below, same length
    shutil.copytree(tiny_models["llama"], src)
    gguf = tmp_path / "src" / "m.gguf"
    assert run_mtk("gguf-export", str(src), "-o", str(gguf), "--type", "f32", "--no-verify").returncode == 0
    data = gguf.read_bytes()
    assert data.count(b"namename1234") == 1
    gguf.write_bytes(data.replace(b"namename1234", b"../../escape"))
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    proc = run_mtk("gguf-import", str(gguf), "-o", str(work / "hf"), "--no-verify")
    assert proc.returncode == 0, proc.stderr
    proc = run_mtk("gguf-export", str(gguf), "-o", str(work / "re.gguf"), "--type", "f16", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    # A tensor named like a path (same length as the name it replaces, so the header stays valid).
    weights = src / "model.safetensors"
    assert len("model.norm.weight") == len("../../../../x/y.z")
    weights.write_bytes(weights.read_bytes().replace(b'"model.norm.weight"', b'"../../../../x/y.z"', 1))
    assert "../../../../x/y.z" in _safetensors_names(weights)
    proc = run_mtk("gguf-export", str(src), "-o", str(work / "t.gguf"), "--no-verify")
    assert proc.returncode in (UnsupportedError.exit_code, InvalidFileError.exit_code), proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    # quantize passes tensors it does not quantize through by name: the name stays a key in the output's header.
    proc = run_mtk("quantize", str(src), "-o", str(work / "q"), "--method", "rtn", "--group-size", "32", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert all(p.is_file() for p in (work / "q").iterdir())
    assert "../../../../x/y.z" in _safetensors_names(work / "q" / "model.safetensors")
    assert sorted(p.name for p in work.iterdir()) == ["hf", "q", "re.gguf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "work"]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["deeper"]
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["m.gguf", "namename1234"]


def test_chat_templates_are_stored_never_rendered_outside_a_sandbox(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A template that reaches ``os`` through a global's __globals__ (the classic Jinja escape) and would create
    a marker file: it travels HF -> GGUF -> HF verbatim through both commands with verification in llama.cpp and
    transformers, and is never run; where the runtimes render it, their sandbox refuses."""
    import jinja2
    from jinja2.exceptions import SecurityError
    from transformers import AutoTokenizer

    from mtk.formats.gguf_reader import open_gguf

    marker = tmp_path / "pwned"
    template = "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}{{ messages[0]['content'] }}"
    src = tmp_path / "src"
    shutil.copytree(tiny_models["llama"], src)
    (src / "chat_template.jinja").write_text(template)
    gguf, back = tmp_path / "m.gguf", tmp_path / "back"
    proc = run_mtk("gguf-export", str(src), "-o", str(gguf), "--type", "f32", "--verify")
    assert proc.returncode == 0, proc.stderr
    model = open_gguf(gguf)
    assert model.metadata["tokenizer.chat_template"] == template
    model.close()
    proc = run_mtk("gguf-import", str(gguf), "-o", str(back), "--verify")
    assert proc.returncode == 0, proc.stderr
    tok = AutoTokenizer.from_pretrained(str(back))
    assert tok.chat_template == template
    assert not marker.exists()
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(SecurityError):
        tok.apply_chat_template(messages, tokenize=False)
    assert not marker.exists()
    # The template is a real escape: Jinja without the sandbox runs it (which is why nothing in mtk may).
    jinja2.Environment().from_string(template).render(messages=messages)
    assert marker.exists()


class _Payload:
    """Unpickling this creates the marker file: what a crafted checkpoint would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_crafted_pickle_is_refused_and_never_run(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from mtk.formats.checkpoint import HFCheckpoint

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny_models["llama"] / name, ckpt / name)
    state = {**load_file(tiny_models["llama"] / "model.safetensors"), "extra": _Payload(marker)}
    torch.save(state, ckpt / "pytorch_model.bin")
    calibration = tmp_path / "calib.txt"
    calibration.write_text("some text to calibrate on\n")
    for args in (
        ["inspect", str(ckpt)],
        ["gguf-export", str(ckpt), "-o", str(tmp_path / "o.gguf")],
        ["quantize", str(ckpt), "-o", str(tmp_path / "q"), "--method", "rtn", "--group-size", "32"],
        ["export-onnx", str(ckpt), "-o", str(tmp_path / "onnx")],
        ["imatrix", str(ckpt), "--calibration", str(calibration), "-o", str(tmp_path / "i.gguf"), "--samples", "1"],
    ):
        proc = run_mtk(*args)
        assert proc.returncode == UnsupportedError.exit_code, (args[0], proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("mtk: error:")]
        assert len(errors) == 1 and "pickle files" in errors[0], proc.stderr
    # Allowed through the API: loaded with weights_only=True, which refuses the payload instead of running it.
    with pytest.raises(InvalidFileError, match=r"weights_only=True.*(getattr|touch|Path)"):
        HFCheckpoint(ckpt, allow_pickle=True)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "ckpt"]
    # The payload is real: a plain unpickler runs it.
    torch.load(ckpt / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def test_signal_handlers_are_scoped_and_respect_an_ignored_signal() -> None:
    from mtk.cli.app import _signals_raise

    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as under nohup: the caller's choice
        with _signals_raise():
            assert signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, signal.SIG_DFL)
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back for main's caller
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


def test_a_keyboard_interrupt_from_inside_a_command_exits_130(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """typer turns a KeyboardInterrupt into a returned 130, which main used to drop (exit 0)."""
    import mtk.converters.hf_to_gguf as h

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(h, "gguf_export", interrupted)
    proc = run_mtk("gguf-export", str(tiny_models["llama"]), "-o", str(tmp_path / "m.gguf"))
    assert proc.returncode == 130 and "interrupted" in proc.stderr, proc.stderr
