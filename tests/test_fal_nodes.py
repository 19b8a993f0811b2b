"""The remote nodes (nodes/fal_remote.py) against the pack's real server on 127.0.0.1.

The server runs the local nodes' code with a tiny model, so the remote nodes' outputs can be
compared with the local nodes' outputs for the same image and prompts.
"""

import base64
import io
import json
import logging
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_sam_kit.nodes.fal_remote import NODE_CLASS_MAPPINGS, SamKitFalSegmentationMap, SamKitFalTinySAM
from comfyui_sam_kit.nodes.seg_map import SamKitSegmentationMap
from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM
from comfyui_sam_kit.samkit.fal import keys, remote, schemas
from comfyui_sam_kit.samkit.fal.keys import KeyConfigError
from comfyui_sam_kit.samkit.fal.errors import FalAuthError, FalConfigError, FalTimeoutError, FalValidationError
from comfyui_sam_kit.samkit.prompts import PromptError
from testsupport.fal_host import FakeComfyHost, InterruptProcessingException
from testsupport.fal_server import OPEN_SEGMAP, SERVER_KEY, Faults, real_handlers, serve, small_model, wait_until
from testsupport.fal_env import clear_fal_environment

SENTINEL = "sentinel-id:SENTINEL-7f3a9c-do-not-leak"
H, W = 48, 64


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No key, URL or config from the machine running the tests."""
    clear_fal_environment(monkeypatch, tmp_path)


def _use(monkeypatch, base, key=SERVER_KEY):
    monkeypatch.setenv("SAMKIT_FAL_BASE_URL", base)
    if key:
        monkeypatch.setenv("FAL_KEY", key)


def _image(b=1, seed=0, h=H, w=W):
    # whole 8-bit levels, so the PNG the node sends holds exactly these pixels
    return (torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed)) * 255).round() / 255


def _tiny(image, endpoint="fal", **kw):
    args = dict(size=1024, confidence=0.0, box_prompt="[[0,0,0,0]]", point_prompt="[[0,0]]", point_label="[0]")
    args.update(kw)
    return SamKitFalTinySAM().run(image, endpoint=endpoint, **args)


def _pixels_of(data_uri):
    return np.array(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))))


# ---------------------------------------------------------------- same results as the local nodes


def test_tiny_sam_node_matches_the_local_node_and_sends_the_batch_at_once(monkeypatch):
    image = _image(b=2, seed=1)
    prompts = dict(point_prompt="[[[20,15]], [[40,30],[10,40]]]", point_label="[[1],[1,0]]", box_prompt="[[5,5,20,20]]",
                   bboxes=[{"x": 30, "y": 10, "width": 20, "height": 25}])
    with serve() as (server, base, faults):
        _use(monkeypatch, base)
        server.pause()
        outcome = {}
        worker = threading.Thread(target=lambda: outcome.update(out=_tiny(image, **prompts)))
        worker.start()
        # both images are in the queue before either has run: submitted concurrently
        wait_until(lambda: len(server.jobs) == 2, what="both submits")
        server.resume()
        worker.join(30)
        jobs = sorted(server.jobs.values(), key=lambda j: j.arguments["point_prompt"][0][0])
    remote_image, remote_mask = outcome["out"]
    local_image, local_mask, objects, _ = SamKitTinySAM().run(small_model(), image, iou=0.9, size=1024, confidence=0.0,
                                                              **prompts)
    assert remote_image.shape == (2, H, W, 3) and remote_mask.shape == (2, H, W) and remote_mask.dtype == torch.float32
    assert torch.equal(remote_mask, local_mask) and local_mask.any()
    assert (remote_image - local_image).abs().max() <= 0.5 / 255 + 1e-6
    # what went over the wire: fal's fields, boxes as [x, y, w, h], each image's own points, lossless PNG
    first, second = (j.arguments for j in jobs)
    assert set(first) == {"image_url", "size", "confidence", "box_prompt", "point_prompt", "point_label"}
    assert first["box_prompt"] == second["box_prompt"] == [[5, 5, 20, 20], [30, 10, 20, 25]]
    assert (first["point_prompt"], first["point_label"]) == ([[20, 15]], [1])
    assert (second["point_prompt"], second["point_label"]) == ([[40, 30], [10, 40]], [1, 0])
    for arguments, sent in zip((first, second), image):
        assert arguments["image_url"].startswith("data:image/png;base64,")
        assert np.array_equal(_pixels_of(arguments["image_url"]), (sent * 255).round().to(torch.uint8).numpy())


def test_segmentation_map_node_matches_the_local_node(monkeypatch):
    image = _image(b=2, seed=2)
    with serve() as (_server, base, faults):
        _use(monkeypatch, base)
        seg_map, coverage = SamKitFalSegmentationMap().run(image, endpoint="fal")
    local_map, _segments, local_coverage = SamKitSegmentationMap().run(
        small_model(), image, OPEN_SEGMAP.points_per_side, OPEN_SEGMAP.pred_iou_thresh,
        OPEN_SEGMAP.stability_score_thresh, 0, 0, 0, box_nms_thresh=OPEN_SEGMAP.box_nms_thresh)
    assert seg_map.shape == (2, H, W, 3) and coverage.shape == (2, H, W)
    assert torch.equal(seg_map, local_map) and torch.equal(coverage, local_coverage) and coverage.any()
    assert faults.count("submit") == 2 and faults.count("file") == 2


def test_results_at_another_size_come_back_at_the_input_size(monkeypatch):
    tiny = real_handlers()[schemas.TINY_SAM]

    def upscaled(arguments, ctx):  # like a service that answers at its inference size
        out = (tiny(arguments, ctx).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return np.asarray(Image.fromarray(out).resize((W * 2, H * 2), Image.Resampling.NEAREST))

    image = _image(seed=3)
    with serve({schemas.TINY_SAM: upscaled}) as (_server, base, _f):
        _use(monkeypatch, base)
        remote_image, remote_mask = _tiny(image, point_prompt="[[30,20]]", point_label="[1]")
    _, local_mask, _, _ = SamKitTinySAM().run(small_model(), image, 1024, 0.0, 0.9, "[[0,0,0,0]]", "[[30,20]]", "[1]")
    assert remote_image.shape == (1, H, W, 3) and remote_mask.shape == (1, H, W)
    inter = (remote_mask.bool() & local_mask.bool()).sum()
    union = (remote_mask.bool() | local_mask.bool()).sum()
    assert union > 0 and inter / union > 0.9


def test_overlay_mask_reads_the_result_shapes_fal_may_send():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    painted = source.copy()
    painted[5:10, 5:15] = (0.4 * source[5:10, 5:15] + 0.6 * np.array([200, 30, 90])).round().astype(np.uint8)
    expected = np.zeros((20, 30), bool)
    expected[5:10, 5:15] = True

    def result(pixels, alpha=None, lossless=True):
        return remote.RemoteImage("r", pixels, alpha, lossless)

    assert np.array_equal(remote.overlay_mask(result(painted), source), expected)
    assert not remote.overlay_mask(result(source.copy()), source).any()  # nothing found
    alpha = expected.astype(np.uint8) * 255
    assert np.array_equal(remote.overlay_mask(result(source.copy(), alpha), source), expected)
    black_white = np.repeat((expected * 255).astype(np.uint8)[..., None], 3, axis=2)
    assert np.array_equal(remote.overlay_mask(result(black_white), source), expected)
    png = io.BytesIO()
    Image.fromarray(painted).save(png, format="PNG")
    decoded = remote.decode_result(png.getvalue(), "r")
    assert decoded.lossless and np.array_equal(decoded.pixels, painted)


# ---------------------------------------------------------------- the key stays on this machine


def test_a_sentinel_key_never_reaches_outputs_logs_errors_or_workflows(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    image = _image(seed=4)
    with serve(keys=(SENTINEL,)) as (_server, base, faults):
        _use(monkeypatch, base, SENTINEL)
        outputs = _tiny(image, point_prompt="[[30,20]]", point_label="[1]") + SamKitFalSegmentationMap().run(image, "fal")
        assert {s.authorization for s in faults.seen if s.stage == "file"} == {None}
    # a server that echoes the header back in its error
    echo = Faults().add("submit", status=401, body=lambda _a: {"detail": f"bad header 'Key {SENTINEL}'"})
    with serve(faults=echo) as (_server, base, _f):
        _use(monkeypatch, base, SENTINEL)
        with pytest.raises(FalAuthError) as info:
            _tiny(image)
    workflow = {"1": {"class_type": cls_name, "inputs": {
        name: spec[1].get("default") for section in cls.INPUT_TYPES().values() for name, spec in section.items()
        if len(spec) > 1 and isinstance(spec[1], dict)}} for cls_name, cls in NODE_CLASS_MAPPINGS.items()}
    secret = SENTINEL.split(":")[1]
    everything = [caplog.text, str(info.value), repr(info.value), json.dumps(workflow),
                  json.dumps({n: c.INPUT_TYPES() for n, c in NODE_CLASS_MAPPINGS.items()}, default=str),
                  repr(outputs), repr(keys.resolve_target("fal"))]
    assert caplog.text and "request" in caplog.text  # the logs were captured, and say what happened
    for text in everything:
        assert secret not in text and "sentinel-id" not in text


def test_self_hosted_target_comes_from_the_config_file_and_never_gets_the_fal_key(monkeypatch, tmp_path):
    studio_key = "studio-key-0001"
    with serve(keys=(studio_key,)) as (_server, base, faults):
        config = tmp_path / "config" / "comfyui-sam-kit" / "fal.ini"
        config.parent.mkdir(parents=True)
        config.write_text(f"[fal]\nkey = {SENTINEL}\n\n[studio]\nbase_url = {base}\nkey = {studio_key}\n\n"
                          "[notes]\ncomment = no base_url: not a target\n")
        monkeypatch.setenv("FAL_KEY", SENTINEL)
        choices, options = SamKitFalTinySAM.INPUT_TYPES()["required"]["endpoint"]
        assert choices == ["fal", "studio"] and options["default"] == "fal"
        seg_map, coverage = SamKitFalSegmentationMap().run(_image(seed=5), endpoint="studio")
    assert seg_map.shape == (1, H, W, 3) and coverage.any()
    assert faults.authorizations() == {f"Key {studio_key}", None}  # None: the key-free file download
    with pytest.raises(KeyConfigError, match=r"endpoint 'elsewhere' is not configured .*known: fal, studio"):
        SamKitFalSegmentationMap().run(_image(), endpoint="elsewhere")


def test_missing_or_half_keys_are_clear_errors_before_any_request(monkeypatch, tmp_path):
    with serve() as (_server, base, faults):
        _use(monkeypatch, base, key=None)
        with pytest.raises(KeyConfigError, match=r"no fal key found.*FAL_KEY=key_id:key_secret.*fal\.ini"):
            SamKitFalSegmentationMap().run(_image(), "fal")
        monkeypatch.setenv("FAL_KEY_ID", "test-id")
        with pytest.raises(KeyConfigError, match="only one of FAL_KEY_ID and FAL_KEY_SECRET"):
            SamKitFalSegmentationMap().run(_image(), "fal")
        assert faults.seen == []
        monkeypatch.setenv("FAL_KEY_SECRET", SERVER_KEY.split(":")[1])  # id + secret make the key
        assert SamKitFalSegmentationMap().run(_image(), "fal")[0].shape == (1, H, W, 3)


def test_config_file_inside_the_pack_folder_is_refused(monkeypatch, tmp_path):
    config = tmp_path / "pack" / "fal.ini"
    config.parent.mkdir()
    config.write_text(f"[fal]\nkey = {SENTINEL}\n")
    monkeypatch.setattr(keys, "PACK_ROOT", config.parent.resolve())
    monkeypatch.setenv("SAMKIT_FAL_CONFIG", str(config))
    with pytest.raises(KeyConfigError, match="inside the SAM Kit folder") as info:
        SamKitFalSegmentationMap().run(_image(), "fal")
    assert "SENTINEL" not in str(info.value)
    assert SamKitFalSegmentationMap.INPUT_TYPES()["required"]["endpoint"][0] == ["fal"]  # listing never fails


def test_plain_http_off_this_machine_is_refused(monkeypatch):
    _use(monkeypatch, "http://10.11.12.13:8765")
    with pytest.raises(FalConfigError, match="plain http"):
        SamKitFalSegmentationMap().run(_image(), "fal")


def test_bad_prompt_fails_before_anything_is_sent(monkeypatch):
    with serve() as (_server, base, faults):
        _use(monkeypatch, base)
        with pytest.raises(PromptError, match="outside the 64x48 image"):
            _tiny(_image(), point_prompt="[[100,10]]", point_label="[1]")
        assert faults.seen == []


# ---------------------------------------------------------------- cancel, deadline, progress


def test_cancel_in_comfyui_cancels_the_remote_jobs_then_raises_comfyuis_interrupt(monkeypatch):
    host = FakeComfyHost(monkeypatch)
    with serve() as (server, base, faults):
        _use(monkeypatch, base)
        server.pause()
        watcher = threading.Thread(target=lambda: (wait_until(lambda: len(server.jobs) == 2, what="submits"),
                                                   host.interrupt()))
        watcher.start()
        with pytest.raises(InterruptProcessingException):
            SamKitFalSegmentationMap().run(_image(b=2), "fal")
        watcher.join()
        assert faults.count("cancel") == 2
        assert all(j.error_type == "request_cancelled" for j in server.jobs.values())
    assert not host.flag.is_set()  # raising cleared ComfyUI's flag, as throw_exception_if_processing_interrupted does
    assert host.texts[-1] == "SAM Segmentation Map (fal): cancelled"


def test_a_failed_image_cancels_the_rest_of_the_batch(monkeypatch):
    faults = Faults()
    with serve(faults=faults) as (server, base, _f):
        # the first submit to arrive is refused once the other image's job exists
        faults.add("submit", status=422, wait_for=lambda: len(server.jobs) == 1,
                   body={"detail": [{"loc": ["body", "image_url"], "msg": "unsupported image", "type": "value_error"}]})
        _use(monkeypatch, base)
        server.pause()
        with pytest.raises(FalValidationError, match="image_url: unsupported image"):
            SamKitFalSegmentationMap().run(_image(b=2), "fal")
        (job,) = server.jobs.values()  # the other image's job: cancelled, not left to run
        assert job.error_type == "request_cancelled" and faults.count("cancel") == 1


def test_a_job_stuck_in_the_queue_is_cancelled_when_the_node_times_out(monkeypatch):
    with serve() as (server, base, faults):
        _use(monkeypatch, base)
        server.pause()
        with pytest.raises(FalTimeoutError, match=r"did not finish within 1 s and was cancelled"):
            SamKitFalSegmentationMap().run(_image(), "fal", timeout=1)
        assert faults.count("cancel") == 1 and faults.count("result") == 0


def test_progress_shows_the_queue_position_then_the_jobs_logs(monkeypatch):
    host = FakeComfyHost(monkeypatch)
    started, release = threading.Event(), threading.Event()
    handlers = real_handlers()
    tiny = handlers[schemas.TINY_SAM]

    def gated(arguments, ctx):
        ctx.log("warming up")
        started.set()
        release.wait(10)
        return tiny(arguments, ctx)

    handlers[schemas.TINY_SAM] = gated
    with serve(handlers, workers=1) as (server, base, faults):
        _use(monkeypatch, base)
        server.pause()
        # someone else's job is ahead of ours
        blocker = remote.FalClient(base, keys.FalKey(SERVER_KEY, "test"))
        blocker.submit(schemas.SEGMENTATION_MAP, {"image_url": schemas.png_data_uri(remote.encode_input_png(_image()[0])[0])})

        def drive():
            wait_until(lambda: any("position 1" in t for t in host.texts), what="our queue position")
            server.resume()
            wait_until(lambda: any("warming up" in t for t in host.texts), what="the job's log line")
            release.set()

        driver = threading.Thread(target=drive)
        driver.start()
        _tiny(_image(), point_prompt="[[30,20]]", point_label="[1]")
        driver.join()
        blocker.close()
    texts = host.texts
    assert texts[0].startswith("Tiny SAM (fal): ") and any(t.startswith("Tiny SAM (fal): in queue, position 1") for t in texts)
    assert any("running" in t and "warming up" in t for t in texts) and texts[-1].startswith("Tiny SAM (fal): done")
    (bar,) = host.bars
    assert bar.values == sorted(bar.values) and bar.value == bar.total
