"""Load SAM Model node: one loader for every family the pack runs."""

from __future__ import annotations

from ..samkit import model_folders
from ..samkit.loader import load_model


class SamKitModelLoader:
    DESCRIPTION = (
        "Loads a SAM-family model (SAM vit_b/l/h, MobileSAM, TinySAM, SAM 2 / 2.1) or FastSAM from models/sams. "
        "Known models that are not there yet are downloaded on first use (with a progress bar) and verified. "
        "The architecture is read from the file, so renamed files and fine-tunes work. Loaded models are "
        "kept, so running the workflow again loads nothing."
    )
    CATEGORY = "SAM Kit"
    FUNCTION = "load"
    RETURN_TYPES = ("SAMKIT_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded model, for SAM Segmentation Map and Tiny SAM.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (model_folders.list_model_choices(), {
                    "tooltip": "Files in models/sams, then known models that will be downloaded when chosen."}),
                "device": (["auto", "gpu", "cpu"], {
                    "default": "auto", "tooltip": "auto: ComfyUI's device (the GPU if there is one). cpu: keep VRAM free."}),
                "precision": (["auto", "fp32", "fp16", "bf16"], {
                    "default": "auto", "tooltip": "auto: fp32 on CPU, bf16/fp16 on GPU. Half precision halves memory. "
                                                  "fp16 needs a GPU. FastSAM has no bf16: it runs fp16 on a GPU, fp32 on the CPU."}),
            }
        }

    def load(self, model_name, device="auto", precision="auto"):
        # a name in models/sams, never a path: a workflow cannot point the loader elsewhere
        return (load_model(model_name, device=device, precision=precision, folders_only=True),)


NODE_CLASS_MAPPINGS = {"SamKitModelLoader": SamKitModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"SamKitModelLoader": "Load SAM Model (SAM Kit)"}
