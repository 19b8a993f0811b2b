"""The pack as a fal App (samkit/fal/app.py), run on this machine: the FastAPI app the fal SDK
builds for it (``BaseServable._build_app``, what ``fal run`` serves too), served by uvicorn on
127.0.0.1 with its lifespan (so ``setup()`` loads the model through the pack's loader), and
called over HTTP. No fal account, nothing deployed; outputs are data URIs (the SDK's
``in_memory`` repository), and fal's upload repositories are made to fail so an upload attempt
would show."""

import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

fal = pytest.importorskip("fal")
uvicorn = pytest.importorskip("uvicorn")

from comfyui_sam_kit.nodes.seg_map import SamKitSegmentationMap  # noqa: E402
from comfyui_sam_kit.nodes.tiny_sam import SamKitTinySAM  # noqa: E402
from comfyui_sam_kit.samkit.fal import schemas  # noqa: E402
from comfyui_sam_kit.samkit.fal.app import SamKitApp, build_local_app  # noqa: E402
from comfyui_sam_kit.samkit.fal.remote import encode_input_png  # noqa: E402
from testsupport.checkpoints import save_sam_checkpoint  # noqa: E402
from testsupport.fal_server import OPEN_SEGMAP, small_model  # noqa: E402

H, W = 40, 56


class _NoUpload(Exception):
    pass


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from fal.toolkit.file.providers import fal as providers

    path = tmp_path_factory.mktemp("models") / "small.pth"
    save_sam_checkpoint(small_model().module, path)

    class LocalApp(SamKitApp):
        model_name = str(path)
        device = "cpu"
        segmap_settings = OPEN_SEGMAP

    def refuse(*_a, **_k):
        raise _NoUpload("an output tried to go to fal's CDN")

    saved = {cls: cls.save for cls in (providers.FalFileRepositoryV3, providers.FalFileRepository)}
    for cls in saved:
        cls.save = refuse
    server = uvicorn.Server(uvicorn.Config(build_local_app(LocalApp), host="127.0.0.1", port=0, lifespan="on",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 120
    while not server.started and time.monotonic() < end and thread.is_alive():
        time.sleep(0.05)
    assert server.started, "the App did not start (setup() failed?)"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)
    for cls, save in saved.items():
        cls.save = save


def _image(seed):
    return (torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(seed)) * 255).round() / 255


def _uri(image):
    return schemas.png_data_uri(encode_input_png(image[0])[0])


def _pixels(image_field):
    assert image_field["url"].startswith("data:image/png;base64,")  # in memory: nothing uploaded
    return np.array(Image.open(io.BytesIO(base64.b64decode(image_field["url"].split(",", 1)[1]))))


def _post(base, route, **body):
    return httpx.post(f"{base}/{route}", json=body, timeout=120, trust_env=False)


def test_tiny_sam_route_gives_the_local_nodes_image(app_url):
    image = _image(1)
    answer = _post(app_url, "tiny-sam", image_url=_uri(image), point_prompt=[[20, 15]], point_label=[1], confidence=0.0,
                   box_prompt=[[30, 5, 20, 25]])
    assert answer.status_code == 200, answer.text
    out = answer.json()["image"]
    assert (out["width"], out["height"], out["content_type"]) == (W, H, "image/png")
    local_image, local_mask, _objects, _boxes = SamKitTinySAM().run(small_model(), image, 1024, 0.0, 0.9,
                                                                    "[[30,5,20,25]]", "[[20,15]]", "[1]")
    expected = (local_image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert local_mask.any() and np.array_equal(_pixels(out), expected)


def test_segment_routes_give_the_local_seg_maps_map_and_masks(app_url):
    image = _image(2)
    local_map, segments, _coverage = SamKitSegmentationMap().run(
        small_model(), image, OPEN_SEGMAP.points_per_side, OPEN_SEGMAP.pred_iou_thresh,
        OPEN_SEGMAP.stability_score_thresh, 0, 0, 0, box_nms_thresh=OPEN_SEGMAP.box_nms_thresh)
    seg_map = _post(app_url, "segmentation-map", image_url=_uri(image))
    assert seg_map.status_code == 200, seg_map.text
    assert np.array_equal(_pixels(seg_map.json()["image"]),
                          (local_map[0] * 255).round().to(torch.uint8).numpy())
    auto = _post(app_url, "auto-segment", image_url=_uri(image), points_per_side=OPEN_SEGMAP.points_per_side,
                 pred_iou_thresh=0.0, stability_score_thresh=0.0, min_mask_region_area=0)
    assert auto.status_code == 200, auto.text
    masks = np.stack([_pixels(m) > 127 for m in auto.json()["individual_masks"]])
    assert len(masks) >= 2 and np.array_equal(masks, segments.numpy() > 0.5)  # same segments, same order
    assert np.array_equal(_pixels(auto.json()["combined_mask"]) > 127, masks.any(0))


def test_bad_inputs_are_fals_422s_and_not_billed(app_url):
    uri = _uri(_image(3))
    refused = _post(app_url, "tiny-sam", image_url=uri, size=10)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "size"]
    assert refused.headers["x-fal-billable-units"] == "0"
    outside = _post(app_url, "tiny-sam", image_url=uri, point_prompt=[[500, 5]], point_label=[1])
    assert outside.status_code == 422 and outside.headers["x-fal-billable-units"] == "0"
    assert outside.json()["detail"][0]["loc"] == ["body", "point_prompt"] and "outside" in outside.json()["detail"][0]["msg"]
    extra = _post(app_url, "segmentation-map", image_url=uri, point_prompt=[[1, 1]])
    assert extra.status_code == 422 and extra.json()["detail"][0]["type"] == "extra_forbidden"
    plain_http = _post(app_url, "segmentation-map", image_url="http://example.com/a.png")
    assert plain_http.status_code == 422


def test_remote_nodes_reach_the_app_by_its_app_id(app_url, monkeypatch, tmp_path):
    # fal.ini's [samkit-app] app = me/samkit: the remote nodes submit to fal's queue (here a loopback
    # stand-in in front of the App) at me/samkit/<route>, with the fal key
    from comfyui_sam_kit.nodes.fal_remote import SamKitFalTinySAM
    from testsupport.fal_gateway import queue_gateway

    key = "app-id:app-secret-0123456789"
    config = tmp_path / "comfyui-sam-kit" / "fal.ini"
    config.parent.mkdir()
    config.write_text("[samkit-app]\napp = me/samkit\n")
    for name in ("FAL_KEY_ID", "FAL_KEY_SECRET", "SAMKIT_SELF_HOSTED_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAMKIT_FAL_CONFIG", str(config))
    monkeypatch.setenv("FAL_KEY", key)
    image = _image(4)
    with queue_gateway(app_url, key) as (base, seen):
        monkeypatch.setenv("SAMKIT_FAL_BASE_URL", base)
        remote_image, remote_mask = SamKitFalTinySAM().run(image, 1024, 0.0, "[[0,0,0,0]]", "[[25,20]]", "[1]",
                                                           "samkit-app")
    local_image, local_mask, _o, _b = SamKitTinySAM().run(small_model(), image, 1024, 0.0, 0.9, "[[0,0,0,0]]",
                                                          "[[25,20]]", "[1]")
    assert seen == ["me/samkit/tiny-sam"]
    assert local_mask.any() and torch.equal(remote_mask, local_mask)
    assert (remote_image - local_image).abs().max() <= 0.5 / 255 + 1e-6


def test_an_https_image_url_is_fetched_under_the_servers_address_rules(app_url, tmp_path, monkeypatch):
    # the App fetches https image_url from any host name, but through url_fetch's rules: a loopback
    # (private) address is refused by default; allowed, a 404 is named as the input, not as a
    # "result file" that expired
    import ssl

    from comfyui_sam_kit.samkit.fal import app as app_module, url_fetch
    from testsupport.tls_loopback import image_and_webhook_site, make_certificates

    certs = make_certificates(tmp_path)
    monkeypatch.setattr(url_fetch, "tls_context", lambda trust_env: ssl.create_default_context(cafile=str(certs.ca)))
    png = base64.b64decode(_uri(_image(4)).split(",", 1)[1])
    with image_and_webhook_site(png, certs) as (url, _recorded):
        private = _post(app_url, "segmentation-map", image_url=f"{url}/cat.png")
        monkeypatch.setattr(app_module.SamKitApp, "image_fetch", url_fetch.OutboundPolicy(any_host=True,
                                                                                         allow_private=True))
        missing = _post(app_url, "segmentation-map", image_url=f"{url}/missing.png")
        fetched = _post(app_url, "segmentation-map", image_url=f"{url}/cat.png")
    from_uri = _post(app_url, "segmentation-map", image_url=_uri(_image(4)))
    assert fetched.status_code == 200 and from_uri.status_code == 200, fetched.text
    assert fetched.json()["image"]["url"] == from_uri.json()["image"]["url"]  # same pixels, same data-URI map
    for refused, why in ((private, "loopback"), (missing, "HTTP 404")):
        assert refused.status_code == 422 and refused.headers["x-fal-billable-units"] == "0"
        detail = refused.json()["detail"][0]
        assert detail["loc"] == ["body", "image_url"] and why in detail["msg"], detail
        assert "result" not in detail["msg"], detail
