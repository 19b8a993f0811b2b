"""Image files of every pixel mode become the right 8-bit RGB picture, or a clear refusal,
in the library, the command line and the self-hosted server (one decoder: samkit.images).

Expected pictures come from the numpy arrays the files were made from (testsupport.image_cases).
"""

import io
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from comfyui_sam_kit.samkit.fal import schemas
from comfyui_sam_kit.samkit.images import (
    ImageDecodeError,
    decode_image_bytes,
    load_image_file,
    read_image,
    rgb8_from_pil,
    to_uint8_rgb,
)
from testsupport.checkpoints import build_small_sam, save_sam_checkpoint
from testsupport.fal_server import SERVER_KEY, serve, small_model
from testsupport.image_cases import bad_cases, good_cases, jpeg_with_orientation

ROOT = Path(__file__).resolve().parents[1]
GOOD = good_cases()
BAD = bad_cases()
AUTH = {"Authorization": f"Key {SERVER_KEY}"}


@pytest.mark.parametrize("case", sorted(GOOD))
def test_every_mode_gives_its_picture_from_a_file_and_from_bytes(case, tmp_path):
    data, suffix, expected = GOOD[case]
    path = tmp_path / f"{case}{suffix}"
    path.write_bytes(data)
    image = load_image_file(path)
    assert image.shape == (1, *expected.shape) and image.dtype.is_floating_point
    assert np.array_equal(to_uint8_rgb(image[0]), expected)
    assert np.array_equal(to_uint8_rgb(decode_image_bytes(data)[0]), expected)


def test_the_reported_16_bit_ramp_keeps_its_256_levels(tmp_path):
    # the field report: 3 distinct colours, 99.6 % white
    ramp = np.tile(np.linspace(0, 65535, 512).astype(np.uint16), (256, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    rgb = read_image(tmp_path / "ramp.png")
    assert len(np.unique(rgb)) == 256 and (rgb == 255).mean() < 0.01
    assert np.array_equal(rgb[0, :, 0], np.round(ramp[0] / 257.0).astype(np.uint8))


def test_modes_no_file_format_writes_are_converted_by_the_same_rules():
    # PA (palette + alpha) and 16-bit little/big endian built in memory; La (premultiplied grey +
    # alpha) has no conversion to RGB in Pillow and is refused naming the image
    rng = np.random.default_rng(3)
    palette = rng.integers(0, 256, (8, 3), dtype=np.uint8)
    index = rng.integers(0, 8, (5, 7), dtype=np.uint8)
    alpha = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    pa = Image.frombytes("PA", (7, 5), np.stack([index, alpha], -1).tobytes())
    pa.putpalette(palette.flatten().tolist())
    assert np.array_equal(rgb8_from_pil(pa), palette[index])
    values = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    for mode, dtype in (("I;16L", "<u2"), ("I;16B", ">u2")):
        img = Image.frombytes(mode, (7, 5), values.astype(dtype).tobytes())
        expected = np.round(values / 257.0).astype(np.uint8)
        assert np.array_equal(rgb8_from_pil(img), np.repeat(expected[..., None], 3, axis=2)), mode
    with pytest.raises(ImageDecodeError, match="upload.png has the pixel mode La"):
        rgb8_from_pil(Image.new("La", (2, 2)), "upload.png")


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_jpeg_exif_orientation_is_applied(orientation):
    data, expected = jpeg_with_orientation(orientation=orientation)
    assert np.array_equal(read_image(data), expected)


@pytest.mark.parametrize("case", sorted(BAD))
def test_unreadable_or_meaningless_images_are_refused_naming_the_file(case, tmp_path):
    data, suffix, words = BAD[case]
    path = tmp_path / f"{case}{suffix}"
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError) as info:
        load_image_file(path)
    message = str(info.value)
    assert str(path) in message and words in message, message
    error = info.value  # no chain of raw Pillow errors behind it
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    with pytest.raises(ImageDecodeError, match="upload"):
        decode_image_bytes(data, "upload")


def test_folders_missing_files_and_oversized_images_are_refused(tmp_path):
    with pytest.raises(ImageDecodeError, match="is a folder"):
        read_image(tmp_path)
    with pytest.raises(ImageDecodeError, match=r"cannot read .*nope\.png"):
        read_image(tmp_path / "nope.png")
    data = GOOD["png_grey"][0]  # 32x24
    with pytest.raises(ImageDecodeError, match="is 32x24; at most 700 pixels"):
        read_image(data, max_pixels=700)
    assert read_image(data, max_pixels=768).shape == (24, 32, 3)


# ---------------------------------------------------------------- the command line


def test_cli_reads_every_mode_right_and_refuses_bad_files(tmp_path, _isolated_model_dir):
    # An untrained SAM's predicted IoU is far below 1, so --confidence 1 keeps no object and the
    # written Tiny SAM image is the decoded input itself (checked: the mask is empty).
    save_sam_checkpoint(build_small_sam(), _isolated_model_dir / "small.pth")
    files = []
    for case, (data, suffix, _expected) in sorted(GOOD.items()):
        files.append(tmp_path / f"{case}{suffix}")
        files[-1].write_bytes(data)
    env = {"SAMKIT_MODELS_DIR": str(_isolated_model_dir), "PATH": "/usr/bin:/bin", "YOLO_OFFLINE": "1"}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "samkit", "tinysam", *map(str, files), "--model", "small.pth", "--device", "cpu",
           "--point-prompt", "[[3,3]]", "--point-label", "[1]", "--confidence", "1", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for case, (_data, _suffix, expected) in GOOD.items():
        assert not np.asarray(Image.open(out / f"{case}_mask.png")).any(), case
        assert np.array_equal(np.asarray(Image.open(out / f"{case}_tinysam.png")), expected), case

    bad = tmp_path / "page.png"
    bad.write_bytes(BAD["html_page"][0])
    cmd[4 : 4 + len(files)] = [str(bad)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"error: {bad} is an HTML page" in done.stderr


# ---------------------------------------------------------------- the server's request path


def _echo(arguments, ctx):
    return ctx.image()[0]


def _run(http, data, mime, endpoint=schemas.TINY_SAM, **arguments):
    import base64

    uri = f"data:{mime};base64," + base64.b64encode(data).decode()
    body = http.post(f"/{endpoint}", json={"image_url": uri, **arguments}).json()
    end = time.monotonic() + 30
    while http.get(body["status_url"]).json()["status"] != "COMPLETED":
        assert time.monotonic() < end, "the job did not complete"
        time.sleep(0.02)
    return http.get(body["response_url"])


def test_server_decodes_every_mode_like_the_command_line():
    mimes = {".png": "image/png", ".tif": "image/tiff", ".tiff": "image/tiff", ".gif": "image/gif", ".webp": "image/webp"}
    with serve({schemas.TINY_SAM: _echo}) as (_server, base, _f), \
            httpx.Client(base_url=base, headers=AUTH, timeout=10, trust_env=False) as http:
        for case, (data, suffix, expected) in sorted(GOOD.items()):
            answer = _run(http, data, mimes[suffix])
            assert answer.status_code == 200, (case, answer.text)
            served = httpx.get(answer.json()["image"]["url"], trust_env=False).content
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(served))), expected), case
        for case, (data, _suffix, words) in sorted(BAD.items()):
            answer = _run(http, data, "image/png")
            assert answer.status_code == 422, case
            detail = answer.json()["detail"][0]
            assert detail["loc"] == ["body", "image_url"] and words in detail["msg"], detail


def test_server_tiny_sam_segments_the_16_bit_picture_not_a_white_frame():
    from comfyui_sam_kit.samkit.images import from_uint8_rgb
    from comfyui_sam_kit.samkit.tiny_sam_job import TinySamRequest, segment_with_prompts

    data, _suffix, expected = GOOD["png_16bit_ramp"]
    with serve() as (_server, base, _f), httpx.Client(base_url=base, headers=AUTH, timeout=10, trust_env=False) as http:
        answer = _run(http, data, "image/png", point_prompt=[[20, 10]], point_label=[1], confidence=0.0)
        served = np.asarray(Image.open(io.BytesIO(httpx.get(answer.json()["image"]["url"], trust_env=False).content)))
    local = segment_with_prompts(small_model(), from_uint8_rgb(expected),
                                 TinySamRequest(confidence=0.0, point_prompt=[[20, 10]], point_label=[1]))
    assert np.array_equal(served, to_uint8_rgb(local.image[0]))
