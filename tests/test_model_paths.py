"""How a model is named: paths on the command line and the server, names in ComfyUI.

Rules (samkit.model_folders.find_model_file): on the command line ``./x``, ``../x``, ``~/x`` and
absolute paths are only that file; another name is the file at that path from the current
folder if there is one, else the file of that name in the model folder, else a known model to
download. In ComfyUI (the loader node) a name is only ever a file inside a model folder.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_sam_kit.nodes.model_loader import SamKitModelLoader
from comfyui_sam_kit.samkit import loader, model_folders, runtime
from testsupport.checkpoints import build_small_sam, save_sam_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_cache():
    loader.clear_cache()
    yield
    loader.clear_cache()


@pytest.fixture
def layout(tmp_path, _isolated_model_dir, monkeypatch):
    """A home, a work folder (the CWD) with files around it, and the model folder, each file a
    different checkpoint so which one was found is visible."""
    home, work = tmp_path / "home", tmp_path / "work"
    files = {
        "cwd": work / "my.pth",  # the same bare name as in the model folder
        "cwd_sub": work / "models" / "my_sam.pth",
        "parent": tmp_path / "up.pth",
        "home": home / "sams" / "h.pth",
        "folder": _isolated_model_dir / "my.pth",
        "folder_only": _isolated_model_dir / "only_here.pth",
        "folder_sub": _isolated_model_dir / "sub" / "deep.pth",
    }
    for seed, path in enumerate(files.values()):
        save_sam_checkpoint(build_small_sam(seed=seed), path)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    return files


@pytest.mark.parametrize("name,which", [
    ("./models/my_sam.pth", "cwd_sub"),  # the field report
    ("models/my_sam.pth", "cwd_sub"),
    ("models//my_sam.pth", "cwd_sub"),
    ("../up.pth", "parent"),
    ("~/sams/h.pth", "home"),
    ("my.pth", "cwd"),  # a name that exists from the current folder is that file
    ("only_here.pth", "folder_only"),  # else the model folder
    ("sub/deep.pth", "folder_sub"),
    ("  ./models/my_sam.pth  ", "cwd_sub"),
])
def test_command_line_names(layout, name, which):
    found = model_folders.find_model_file(name)
    assert found is not None and found.is_absolute() and found.samefile(layout[which])
    assert loader.load_model(name, device="cpu").path == str(found)


def test_absolute_paths_are_that_file(layout):
    assert model_folders.find_model_file(str(layout["parent"])) == layout["parent"]


@pytest.mark.parametrize("name", ["./only_here.pth", "../only_here.pth", "~/only_here.pth", "./mobile_sam.pt"])
def test_an_explicit_path_is_never_looked_up_elsewhere_or_downloaded(layout, name):
    with pytest.raises(FileNotFoundError) as info:
        loader.load_model(name, device="cpu")
    message = str(info.value)
    assert str(Path(name).expanduser().absolute()) in message and "does not exist" in message, message


def test_a_missing_bare_name_says_it_looked_in_the_current_folder_and_the_model_folder(layout, _isolated_model_dir):
    with pytest.raises(FileNotFoundError) as info:
        loader.load_model("nowhere.pth", device="cpu")
    assert f"the current folder ({Path.cwd()})" in str(info.value) and str(_isolated_model_dir) in str(info.value)


# ---------------------------------------------------------------- inside ComfyUI: names in the model folders only


@pytest.mark.parametrize("name,which", [("my.pth", "folder"), ("only_here.pth", "folder_only"), ("sub/deep.pth", "folder_sub")])
def test_node_names_are_files_in_the_model_folder(layout, name, which):
    (model,) = SamKitModelLoader().load(name, "cpu", "auto")
    assert model.path == str(layout[which])  # the folder's my.pth, not the current folder's


@pytest.mark.parametrize("name", ["ABS", "~/sams/h.pth", "../up.pth", "sub/../../up.pth", "models/my_sam.pth"])
def test_node_names_never_leave_the_model_folder(layout, name, _isolated_model_dir):
    name = str(layout["parent"]) if name == "ABS" else name
    with pytest.raises(FileNotFoundError) as info:
        SamKitModelLoader().load(name, "cpu", "auto")
    message = str(info.value)
    assert str(_isolated_model_dir) in message and "current folder" not in message, message
    if name != "models/my_sam.pth":  # a path is refused as a path
        assert "not a path" in message


# ---------------------------------------------------------------- the real command line and server


def _env(model_dir, home):
    return {"SAMKIT_MODELS_DIR": str(model_dir), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "YOLO_OFFLINE": "1",
            "PYTHONPATH": str(ROOT), "HOME": str(home), "NO_PROXY": "127.0.0.1,localhost"}


@pytest.mark.parametrize("model", ["./models/my_sam.pth", "~/sams/h.pth", "../up.pth"])
def test_cli_segmap_with_a_relative_model_path(layout, model, tmp_path, _isolated_model_dir):
    Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)).save("img.png")
    done = subprocess.run([sys.executable, "-m", "samkit", "segmap", "img.png", "--model", model, "--device", "cpu",
                           "--points-per-side", "2", "--out", "out"], cwd=Path.cwd(),
                          env=_env(_isolated_model_dir, tmp_path / "home"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.asarray(Image.open("out/img_segmap.png")).shape == (20, 30, 3)


def test_cli_in_process_resolves_against_the_working_folder(layout, monkeypatch, capsys):
    from comfyui_sam_kit.samkit.__main__ import main

    monkeypatch.setattr(runtime.hooks, "progress", runtime.hooks.progress)  # main() installs a terminal bar
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save("img.png")
    assert main(["segmap", "img.png", "--model", "models/my_sam.pth", "--device", "cpu", "--points-per-side", "1",
                 "--out", "out"]) == 0
    assert main(["segmap", "img.png", "--model", "./nope.pth", "--device", "cpu", "--out", "out"]) == 2
    assert f"error: model file {Path.cwd() / 'nope.pth'} does not exist" in capsys.readouterr().err


def test_serve_with_a_relative_model_path(layout, tmp_path, _isolated_model_dir, monkeypatch, capsys):
    proc = subprocess.Popen([sys.executable, "-m", "samkit", "serve", "--model", "./models/my_sam.pth", "--device", "cpu",
                             "--port", "0", "--no-require-key"], cwd=Path.cwd(),
                            env=_env(_isolated_model_dir, tmp_path / "home"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    output, found, end = [], None, time.monotonic() + 120
    try:
        while found is None and time.monotonic() < end and proc.poll() is None:
            try:
                output.append(lines.get(timeout=0.5))
            except queue.Empty:
                continue
            found = re.search(r"serving .* at http://127\.0\.0\.1:\d+", output[-1])
        assert found, "".join(output)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    from comfyui_sam_kit.samkit.fal.cli import main

    monkeypatch.setattr(runtime.hooks, "progress", runtime.hooks.progress)  # main() installs a terminal bar
    assert main(["--model", "../missing.pth", "--no-require-key", "--device", "cpu"]) == 2
    assert f"model file {(Path.cwd() / '..' / 'missing.pth').absolute()} does not exist" in capsys.readouterr().err
