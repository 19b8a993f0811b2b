"""Test-only ComfyUI nodes, installed next to the pack in the integration tests' ComfyUI (never shipped).

ComfyUI has no core node that turns a LATENT's ``noise_mask`` back into something a test can
read, and sampling with it would need a diffusion model. This probe returns the noise mask that
SetLatentNoiseMask attached, as a MASK, so the test can save it (MaskToImage -> SaveImage) and
compare it with the mask it should be.

``memory_probe`` adds a route, ``GET /samkit_test/memory``, reporting the process's memory and
the models ComfyUI and the pack hold (tests/integration/test_memory.py).
"""

from . import memory_probe

memory_probe.register()


class SamKitTestProbeNoiseMask:
    CATEGORY = "_for_testing/samkit"
    FUNCTION = "probe"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("noise_mask",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def probe(self, samples):
        if "noise_mask" not in samples:
            raise ValueError("this LATENT carries no noise_mask (is SetLatentNoiseMask upstream?)")
        mask = samples["noise_mask"]
        return (mask.reshape((-1, mask.shape[-2], mask.shape[-1])).float(),)


NODE_CLASS_MAPPINGS = {"SamKitTestProbeNoiseMask": SamKitTestProbeNoiseMask}
NODE_DISPLAY_NAME_MAPPINGS = {"SamKitTestProbeNoiseMask": "Noise mask of a LATENT (SAM Kit tests)"}
