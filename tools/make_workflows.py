"""Write workflows/*.json: the example workflows, in the UI format ComfyUI's editor saves and loads.

Each workflow uses one SAM Kit node and feeds its result into an image-to-image graph:

* sam_segmentation_map_controlnet.json: seg map -> ControlNet "seg" conditioning (SD 1.5);
* tiny_sam_inpaint.json: Tiny SAM mask -> GrowMask / FeatherMask -> inpainting with
  SetLatentNoiseMask, pasted back with ImageCompositeMasked;
* tiny_sam_background_replace.json: Tiny SAM box -> subject composited onto a new background
  (ImageCompositeMasked), then a light image-to-image pass to blend it;
* fal_*.json: the same jobs with the remote (fal.ai or self-hosted) nodes, when the pack has them.

Widget values are positional in the UI format, so they are laid out from /object_info (the
same rules the editor follows; see tools/workflow_convert.py). By default that is the pack's
own node classes plus the core node specs saved in tools/core_object_info.json, so no ComfyUI
is needed:

    python tools/make_workflows.py                                  # offline
    python tools/make_workflows.py --url http://127.0.0.1:8188      # a ComfyUI with this pack;
                                                                    # also refreshes the snapshot
    python tools/make_workflows.py --check                          # are workflows/ up to date?

The tests convert every file back to an API prompt and validate it (tests/test_workflows.py
offline; tests/integration/test_workflows_live.py against a real ComfyUI and its frontend).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
import uuid
from pathlib import Path

# tools/ is on sys.path: this script's own folder when run, the tests put it there too
import workflow_convert
from workflow_convert import combo_choices, has_control_widget, input_type, is_widget

ROOT = Path(__file__).resolve().parents[1]

OUT_DIR = ROOT / "workflows"
FRONTEND_VERSION = "1.27.10"

# Model files the examples name. SAM Kit downloads mobile_sam.pt on first use; the SD files are
# the usual names users already have (ComfyUI's own templates use the same checkpoint name).
SD15_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
SEG_CONTROLNET = "control_v11p_sd15_seg.pth"
SAM_MODEL = "mobile_sam.pt"
EXAMPLE_IMAGE = "example.png"

REMOTE_TEXT = (
    "The endpoint 'fal' runs on fal.ai with the key from the FAL_KEY environment variable (or SAM Kit's config "
    "file); a server of your own (python -m samkit serve) appears there once it is named in that config file. "
    "Keys never go in the workflow.\n")
REMOTE_STEP = "2. " + REMOTE_TEXT
GROUP_COLORS = {"sam": "#3f789e", "sd": "#8A8", "out": "#b06634", "remote": "#a1309b"}
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"

SLOT_HEIGHT, WIDGET_HEIGHT = 20, 24
# room for the point/box editor (web/js/tiny_sam_editor.js) under the Tiny SAM widgets
TINY_SAM_SIZE = [340, 560]


class Node:
    def __init__(self, graph: "Graph", node_id: int, kind: str, pos, title=None, size=None):
        self.graph, self.id, self.kind, self.pos, self.title, self.size = graph, node_id, kind, list(pos), title, size
        self.links_in: dict[str, int] = {}
        self.links_out: dict[int, list[int]] = {}
        self.widgets: dict[str, object] = {}
        self.controls: dict[str, str] = {}
        self.text = None  # notes

    def out(self, name_or_index) -> tuple["Node", int]:
        info = self.graph.info[self.kind]
        names = info.get("output_name") or info["output"]
        index = name_or_index if isinstance(name_or_index, int) else list(names).index(name_or_index)
        return self, index


class Graph:
    def __init__(self, title: str, object_info: dict):
        self.title, self.info = title, object_info
        self.nodes: list[Node] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def node(self, kind: str, pos, *, title=None, size=None, inputs=None, controls=None, **widgets) -> Node:
        if kind not in self.info:
            raise KeyError(f"{kind} is not in /object_info: is the pack installed in that ComfyUI?")
        node = Node(self, len(self.nodes) + 1, kind, pos, title, size)
        self.nodes.append(node)
        specs = _specs(self.info[kind])
        for name in widgets:
            if name not in specs or not is_widget(specs[name]):
                raise KeyError(f"{kind} has no widget {name!r}")
        for name, spec in specs.items():
            if is_widget(spec):
                node.widgets[name] = widgets[name] if name in widgets else _default(spec)
                if has_control_widget(name, spec):
                    node.controls[name] = (controls or {}).get(name, "fixed")
        for name, (source, slot) in (inputs or {}).items():
            self.link(source, slot, node, name)
        return node

    def note(self, text: str, pos, size=(400, 200), title="Note") -> Node:
        node = Node(self, len(self.nodes) + 1, "Note", pos, title, list(size))
        node.text = text
        self.nodes.append(node)
        return node

    def link(self, source: Node, slot: int, target: Node, input_name: str) -> None:
        spec = _specs(self.info[target.kind]).get(input_name)
        if spec is None:
            raise KeyError(f"{target.kind} has no input {input_name!r}")
        out_type = self.info[source.kind]["output"][slot]
        link_id = len(self.links) + 1
        self.links.append([link_id, source.id, slot, target.id, None, out_type])  # target slot set on export
        target.links_in[input_name] = link_id
        source.links_out.setdefault(slot, []).append(link_id)

    def group(self, title: str, nodes: list[Node], color: str, pad: int = 30) -> None:
        boxes = [(n.pos[0], n.pos[1], *self._size(n)) for n in nodes]
        x0 = min(b[0] for b in boxes) - pad
        y0 = min(b[1] for b in boxes) - pad - 40  # room for the title bar and the nodes' own titles
        x1 = max(b[0] + b[2] for b in boxes) + pad
        y1 = max(b[1] + b[3] for b in boxes) + pad
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": color, "font_size": 24, "flags": {}})

    # ------------------------------------------------------------------ export
    def _size(self, node: Node):
        if node.size:
            return node.size
        if node.kind in ("LoadImage", "PreviewImage", "SaveImage", "MaskPreview"):
            return [320, 330]
        info = self.info[node.kind]
        specs = _specs(info)
        sockets = sum(1 for s in specs.values() if not is_widget(s))
        rows = max(sockets, len(info["output"]))
        height = 10 + SLOT_HEIGHT * rows
        for name, spec in specs.items():
            if is_widget(spec):
                multiline = input_type(spec) == "STRING" and spec[1].get("multiline") if len(spec) > 1 else False
                height += 90 if multiline else WIDGET_HEIGHT
                if name in node.controls:
                    height += WIDGET_HEIGHT
        return [340 if node.kind.startswith("SamKit") else 315, height]

    def _order(self) -> dict[int, int]:
        """Execution order the editor stores: sources before the nodes they feed."""
        incoming = {n.id: {self.links[lid - 1][1] for lid in n.links_in.values()} for n in self.nodes}
        order, done = {}, set()
        while len(done) < len(self.nodes):
            ready = sorted(nid for nid, deps in incoming.items() if nid not in done and deps <= done)
            for nid in ready:
                order[nid] = len(order)
                done.add(nid)
        return order

    def to_json(self) -> dict:
        order = self._order()
        nodes = []
        for node in self.nodes:
            if node.kind == "Note":
                nodes.append({"id": node.id, "type": "Note", "pos": node.pos, "size": node.size, "flags": {},
                              "order": order[node.id], "mode": 0, "inputs": [], "outputs": [],
                              "title": node.title, "properties": {}, "widgets_values": [node.text],
                              "color": NOTE_COLOR, "bgcolor": NOTE_BGCOLOR})
                continue
            info = self.info[node.kind]
            specs = _specs(info)
            inputs = []
            # the editor lists plain sockets first, then one socket per widget
            for name, spec in specs.items():
                if not is_widget(spec):
                    entry = {"localized_name": name, "name": name, "type": input_type(spec), "link": node.links_in.get(name)}
                    if name in _optional_names(info):
                        entry["shape"] = 7  # the editor draws optional sockets hollow
                    inputs.append(entry)
            for name, spec in specs.items():
                if is_widget(spec):
                    entry = {"localized_name": name, "name": name, "type": input_type(spec),
                             "widget": {"name": name}, "link": node.links_in.get(name)}
                    if name in _optional_names(info):
                        entry["shape"] = 7
                    inputs.append(entry)
            if any(len(s) > 1 and isinstance(s[1], dict) and s[1].get("image_upload") for s in specs.values()):
                inputs.append({"localized_name": "upload", "name": "upload", "type": "IMAGEUPLOAD",
                               "widget": {"name": "upload"}, "link": None})
            for slot, entry in enumerate(inputs):
                if entry["link"] is not None:
                    self.links[entry["link"] - 1][4] = slot
            outputs = []
            names = info.get("output_name") or info["output"]
            for slot, (kind, name) in enumerate(zip(info["output"], names)):
                outputs.append({"localized_name": name, "name": name, "type": kind,
                                "links": node.links_out.get(slot) or None})
            values = []
            for name, spec in specs.items():
                if is_widget(spec):
                    values.append(node.widgets[name])
                    if name in node.controls:
                        values.append(node.controls[name])
            if any(len(s) > 1 and isinstance(s[1], dict) and s[1].get("image_upload") for s in specs.values()):
                values.append("image")
            entry = {"id": node.id, "type": node.kind, "pos": node.pos, "size": self._size(node), "flags": {},
                     "order": order[node.id], "mode": 0, "inputs": inputs, "outputs": outputs,
                     "properties": {"Node name for S&R": node.kind}, "widgets_values": values}
            if node.title:
                entry["title"] = node.title
            nodes.append(entry)
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-sam-kit/workflows/{self.title}")),
            "revision": 0,
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": nodes,
            "links": self.links,
            "groups": self.groups,
            "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [80, 120]}, "frontendVersion": FRONTEND_VERSION},
            "version": 0.4,
        }


def _specs(info: dict) -> dict:
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return {name: info["input"][section][name] for section in ("required", "optional") for name in order.get(section, [])}


def _optional_names(info: dict) -> set:
    return set(info["input"].get("optional", {}))


def _default(spec):
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    choices = combo_choices(spec)
    if choices:
        return choices[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(input_type(spec))


# ---------------------------------------------------------------------- shared pieces
def sd15_img2img(g: Graph, x: int, y: int, positive_text: str, negative_text: str):
    """Checkpoint + prompts at column x; returns (checkpoint, positive, negative)."""
    ckpt = g.node("CheckpointLoaderSimple", (x, y), ckpt_name=SD15_CHECKPOINT)
    pos = g.node("CLIPTextEncode", (x, y + 160), title="Positive prompt", text=positive_text,
                 inputs={"clip": ckpt.out("CLIP")})
    neg = g.node("CLIPTextEncode", (x, y + 360), title="Negative prompt", text=negative_text,
                 inputs={"clip": ckpt.out("CLIP")})
    return ckpt, pos, neg


def sample_and_save(g: Graph, x: int, y: int, ckpt: Node, positive, negative, latent, denoise: float, prefix: str):
    sampler = g.node("KSampler", (x, y), seed=1, controls={"seed": "fixed"}, steps=20, cfg=7.0,
                     sampler_name="euler", scheduler="normal", denoise=denoise,
                     inputs={"model": ckpt.out("MODEL"), "positive": positive, "negative": negative, "latent_image": latent})
    decode = g.node("VAEDecode", (x, y + 330), inputs={"samples": sampler.out(0), "vae": ckpt.out("VAE")})
    return sampler, decode


# ---------------------------------------------------------------------- the workflows
def segmentation_map_controlnet(info: dict, remote: bool = False) -> Graph:
    g = Graph("SAM Segmentation Map (fal) -> ControlNet seg" if remote else "SAM Segmentation Map -> ControlNet seg", info)
    image = g.node("LoadImage", (0, 80), image=EXAMPLE_IMAGE)
    if remote:
        segmap = g.node("SamKitFalSegmentationMap", (380, 80), inputs={"image": image.out("IMAGE")})
        sam_nodes = [segmap]
    else:
        loader = g.node("SamKitModelLoader", (380, 80), model_name=SAM_MODEL)
        segmap = g.node("SamKitSegmentationMap", (380, 240), seed=0,
                        inputs={"model": loader.out("model"), "image": image.out("IMAGE")})
        sam_nodes = [loader, segmap]
    preview = g.node("PreviewImage", (760, 80), title="Segmentation map", inputs={"images": segmap.out("seg_map")})
    picker = g.node("SamKitSegmentPicker", (760, 460), x=235, y=330, inputs={"seg_map": segmap.out("seg_map")})
    picked = g.node("MaskPreview", (760, 620), title="Segment under (x, y)", inputs={"mask": picker.out("mask")})

    ckpt, pos, neg = sd15_img2img(g, 1160, 80, "a cosy cottage by a quiet road, golden hour, detailed photo",
                                  "blurry, low quality, deformed")
    cn = g.node("ControlNetLoader", (1160, 600), control_net_name=SEG_CONTROLNET)
    apply = g.node("ControlNetApplyAdvanced", (1540, 80), strength=0.9, start_percent=0.0, end_percent=0.85,
                   inputs={"positive": pos.out(0), "negative": neg.out(0), "control_net": cn.out(0),
                           "image": segmap.out("seg_map"), "vae": ckpt.out("VAE")})
    encode = g.node("VAEEncode", (1540, 340), inputs={"pixels": image.out("IMAGE"), "vae": ckpt.out("VAE")})
    sampler, decode = sample_and_save(g, 1900, 80, ckpt, apply.out(0), apply.out(1), encode.out(0), 0.8, "segmap")
    save = g.node("SaveImage", (2260, 80), filename_prefix="samkit_controlnet_seg", inputs={"images": decode.out(0)})

    where = "fal.ai (or your own server; see README)" if remote else "this computer"
    g.note(
        "SAM Segmentation Map segments everything in the image on " + where + " and paints each segment "
        "in its own flat colour: the layout a ControlNet 'seg' model follows.\n\n"
        "1. Pick your image in Load Image.\n"
        + (REMOTE_STEP if remote else
           "2. Load SAM Model downloads mobile_sam.pt (40 MB) on first use; any SAM, MobileSAM, TinySAM or "
           "FastSAM file in models/sams works.\n")
        + "3. Put an SD 1.5 checkpoint in models/checkpoints and control_v11p_sd15_seg in models/controlnet.\n\n"
        + ("" if remote else "points_per_side sets how fine the segments are (32 = 1024 prompts). The seed only "
                             "picks the colours. ")
        + "SAM Segment Picker turns the segment under (x, y) into a MASK.",
        (0, 480), size=(340, 420), title="How to use")
    g.group("1. Segment everything (SAM Kit)", [image, *sam_nodes, preview, picker, picked],
            GROUP_COLORS["remote" if remote else "sam"])
    g.group("2. Image to image, guided by the seg map (ControlNet)", [ckpt, pos, neg, cn, apply, encode, sampler, decode, save],
            GROUP_COLORS["sd"])
    return g


def tiny_sam_inpaint(info: dict, remote: bool = False, sam3: bool = False) -> Graph:
    g = Graph("SAM 3 (fal) -> inpaint" if sam3 else "Tiny SAM (fal) -> inpaint" if remote else "Tiny SAM -> inpaint", info)
    image = g.node("LoadImage", (0, 80), image=EXAMPLE_IMAGE)
    # two clicks on the house (wall and roof) and one on the car, which must stay out of the mask
    prompts = dict(box_prompt="[[0,0,0,0]]", point_prompt="[[175,360],[235,215],[600,420]]", point_label="[1,1,0]")
    if sam3:  # the house by name; the click on the car keeps it out
        tiny = g.node("SamKitFalSAM3", (380, 80), size=TINY_SAM_SIZE, inputs={"image": image.out("IMAGE")},
                      **_remote_widgets(info, "SamKitFalSAM3", {**prompts, "prompt": "house", "job": "sam-3 (masks)"}))
        sam_nodes = [tiny]
    elif remote:
        tiny = g.node("SamKitFalTinySAM", (380, 80), size=TINY_SAM_SIZE, inputs={"image": image.out("IMAGE")},
                      **_remote_widgets(info, "SamKitFalTinySAM", prompts))
        sam_nodes = [tiny]
    else:
        loader = g.node("SamKitModelLoader", (380, 80), model_name=SAM_MODEL)
        tiny = g.node("SamKitTinySAM", (380, 240), size=TINY_SAM_SIZE,
                      inputs={"model": loader.out("model"), "image": image.out("IMAGE")}, **prompts)
        sam_nodes = [loader, tiny]
    if sam3:
        preview = g.node("MaskPreview", (760, 80), title="What SAM 3 found", inputs={"mask": tiny.out("mask")})
    else:
        preview = g.node("PreviewImage", (760, 80), title="What Tiny SAM found", inputs={"images": tiny.out("image")})
    grow = g.node("GrowMask", (760, 460), expand=12, tapered_corners=True, inputs={"mask": tiny.out("mask")})
    feather = g.node("FeatherMask", (760, 600), left=16, top=16, right=16, bottom=16, inputs={"mask": grow.out(0)})

    ckpt, pos, neg = sd15_img2img(g, 1160, 80, "a small red brick house with a green door, detailed photo",
                                  "blurry, low quality, deformed")
    encode = g.node("VAEEncode", (1160, 600), inputs={"pixels": image.out("IMAGE"), "vae": ckpt.out("VAE")})
    noise_mask = g.node("SetLatentNoiseMask", (1540, 600), inputs={"samples": encode.out(0), "mask": grow.out(0)})
    sampler, decode = sample_and_save(g, 1540, 80, ckpt, pos.out(0), neg.out(0), noise_mask.out(0), 0.9, "inpaint")
    paste = g.node("ImageCompositeMasked", (1900, 80), x=0, y=0, resize_source=False,
                   inputs={"destination": image.out("IMAGE"), "source": decode.out(0), "mask": feather.out(0)})
    save = g.node("SaveImage", (2260, 80), filename_prefix="samkit_inpaint", inputs={"images": paste.out(0)})

    g.note(
        ("SAM 3 (fal) finds objects by name: prompt 'house' (fal-ai/sam-3/image, $0.005 per request on fal's "
         "page); clicks and boxes work as on Tiny SAM, and a box is one object.\n\n" if sam3 else "")
        + "Tiny SAM cuts out what you click: point_prompt [[x, y], ...] in pixels of the image, point_label 1 for "
        "'this object' and 0 for 'not this'; or box_prompt [[x, y, width, height]]. The example clicks the wall and "
        "roof of the house in SAM Kit's docs/images/example.png and excludes the car. Set your own on the node's "
        "image: click = this, right-click = not this, drag = box.\n\n"
        "The mask is grown (GrowMask) so the new content covers the old edges, then repainted only there "
        "(SetLatentNoiseMask + KSampler), and pasted back over the original with a feathered edge "
        "(FeatherMask + ImageCompositeMasked), so pixels outside the mask stay exactly as they were.\n\n"
        + (REMOTE_TEXT if remote else
           "With an inpainting checkpoint, use VAE Encode (for Inpainting) instead of VAE Encode + Set Latent Noise Mask."),
        (0, 480), size=(340, 460), title="How to use")
    g.group("1. Select the object (SAM Kit)", [image, *sam_nodes, preview, grow, feather], GROUP_COLORS["remote" if remote else "sam"])
    g.group("2. Repaint inside the mask, paste back", [ckpt, pos, neg, encode, noise_mask, sampler, decode, paste, save], GROUP_COLORS["sd"])
    return g


def tiny_sam_background_replace(info: dict) -> Graph:
    g = Graph("Tiny SAM -> background replacement", info)
    image = g.node("LoadImage", (0, 80), image=EXAMPLE_IMAGE)
    loader = g.node("SamKitModelLoader", (380, 80), model_name=SAM_MODEL)
    tiny = g.node("SamKitTinySAM", (380, 240), size=TINY_SAM_SIZE, box_prompt="[[120,165,235,230]]", point_prompt="[[0,0]]",
                  point_label="[0]",
                  inputs={"model": loader.out("model"), "image": image.out("IMAGE")})
    preview = g.node("PreviewImage", (760, 80), title="The subject", inputs={"images": tiny.out("image")})

    ckpt, pos, neg = sd15_img2img(g, 1160, 80, "a snowy mountain valley at dawn, wide landscape photo",
                                  "blurry, low quality, text, watermark")
    encode = g.node("VAEEncode", (1160, 600), inputs={"pixels": image.out("IMAGE"), "vae": ckpt.out("VAE")})
    bg_sampler, bg_decode = sample_and_save(g, 1540, 80, ckpt, pos.out(0), neg.out(0), encode.out(0), 1.0, "background")
    bg_sampler.title = "New background (same size as the photo)"
    paste = g.node("ImageCompositeMasked", (1900, 80), x=0, y=0, resize_source=False, title="Subject over the new background",
                   inputs={"destination": bg_decode.out(0), "source": image.out("IMAGE"), "mask": tiny.out("mask")})
    blend_encode = g.node("VAEEncode", (1900, 340), inputs={"pixels": paste.out(0), "vae": ckpt.out("VAE")})
    blend_sampler, blend_decode = sample_and_save(g, 2260, 80, ckpt, pos.out(0), neg.out(0), blend_encode.out(0), 0.3, "blend")
    blend_sampler.title = "Blend (light image to image)"
    save = g.node("SaveImage", (2620, 80), filename_prefix="samkit_new_background", inputs={"images": blend_decode.out(0)})

    g.note(
        "Background replacement: Tiny SAM cuts the subject out with a box ([[x, y, width, height]] in pixels; "
        "the example boxes the house of SAM Kit's docs/images/example.png; drag a box on the node's image "
        "to set yours). A new background is generated at the photo's size, the subject is composited over it "
        "with the Tiny SAM mask (ImageCompositeMasked), and a light image-to-image pass (denoise 0.3) blends "
        "light and edges.\n\nFor a background photo instead, load it with a second Load Image into "
        "'destination' (same size as the photo, or set x/y).",
        (0, 480), size=(340, 420), title="How to use")
    g.group("1. Cut out the subject (SAM Kit)", [image, loader, tiny, preview], GROUP_COLORS["sam"])
    g.group("2. New background, composite, blend", [ckpt, pos, neg, encode, bg_sampler, bg_decode, paste, blend_encode,
                                                     blend_sampler, blend_decode, save], GROUP_COLORS["sd"])
    return g


def _remote_widgets(info: dict, kind: str, wanted: dict) -> dict:
    """The remote node mirrors the local one; pass only the widgets it really has."""
    specs = _specs(info[kind])
    return {k: v for k, v in wanted.items() if k in specs and is_widget(specs[k])}


WORKFLOWS = {
    "sam_segmentation_map_controlnet.json": lambda info: segmentation_map_controlnet(info),
    "tiny_sam_inpaint.json": lambda info: tiny_sam_inpaint(info),
    "tiny_sam_background_replace.json": lambda info: tiny_sam_background_replace(info),
    "fal_sam_segmentation_map_controlnet.json": lambda info: segmentation_map_controlnet(info, remote=True),
    "fal_tiny_sam_inpaint.json": lambda info: tiny_sam_inpaint(info, remote=True),
    "fal_sam3_inpaint.json": lambda info: tiny_sam_inpaint(info, remote=True, sam3=True),
}
REMOTE_NODES = {"fal_sam_segmentation_map_controlnet.json": "SamKitFalSegmentationMap",
                "fal_tiny_sam_inpaint.json": "SamKitFalTinySAM", "fal_sam3_inpaint.json": "SamKitFalSAM3"}


def build_all(object_info: dict) -> dict[str, dict]:
    built = {}
    for name, make in WORKFLOWS.items():
        if name in REMOTE_NODES and REMOTE_NODES[name] not in object_info:
            print(f"skipping {name}: {REMOTE_NODES[name]} is not in this ComfyUI", file=sys.stderr)
            continue
        built[name] = make(object_info).to_json()
    return built


def core_node_types(workflows: dict[str, dict], object_info: dict) -> set[str]:
    """Node types the workflows use that are not this pack's (and not frontend-only)."""
    pack = {name for name, info in object_info.items() if info.get("python_module", "").endswith("comfyui-sam-kit")}
    used = {node["type"] for wf in workflows.values() for node in wf["nodes"]}
    return {kind for kind in used if kind not in workflow_convert.FRONTEND_ONLY_NODES and kind not in pack
            and not kind.startswith("SamKit")}


def render(workflow: dict) -> str:
    return json.dumps(workflow, indent=2) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", help="a running ComfyUI with this pack installed, e.g. http://127.0.0.1:8188; "
                                      "its core node specs are saved as the offline snapshot")
    source.add_argument("--object-info", type=Path, help="a saved /object_info JSON")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if workflows/ differ from what would be written")
    args = parser.parse_args(argv)
    snapshot = None
    if args.url:
        base = args.url.rstrip("/")
        with urllib.request.urlopen(base + "/object_info", timeout=60) as response:
            info = json.load(response)
        with urllib.request.urlopen(base + "/system_stats", timeout=60) as response:
            stats = json.load(response)["system"]
        version = stats.get("comfyui_version", "")
        frontend = stats.get("required_frontend_version", "")
    elif args.object_info:
        info = json.loads(args.object_info.read_text())
    else:
        info = workflow_convert.offline_object_info(ROOT)
    workflows = build_all(info)
    if args.url:
        snapshot = workflow_convert.core_snapshot_from(info, core_node_types(workflows, info), version, frontend)
    if args.check:
        stale = [name for name, wf in workflows.items()
                 if not (args.out / name).is_file() or (args.out / name).read_text() != render(wf)]
        extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in workflows)
        for name in stale:
            print(f"out of date: {args.out / name}")
        for name in extra:
            print(f"not made by this tool: {args.out / name}")
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, workflow in workflows.items():
        (args.out / name).write_text(render(workflow))
        print(f"wrote {args.out / name}")
    if snapshot is not None:
        workflow_convert.CORE_SNAPSHOT.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
        print(f"wrote {workflow_convert.CORE_SNAPSHOT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
