"""Draw docs/images/example.png: a small made-up scene (sky, sun, hills, house, tree, car).

It is the image README's quick-start command segments; drawn here so the repo ships no
photos it does not own. Run: python tools/make_example_image.py
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

W, H = 768, 512


def main(out: Path = Path(__file__).resolve().parents[1] / "docs" / "images" / "example.png") -> None:
    rng = np.random.default_rng(2026)
    sky = np.linspace([110, 170, 235], [200, 225, 250], H)[:, None, :].repeat(W, axis=1)
    img = Image.fromarray(sky.astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse([600, 50, 690, 140], fill=(255, 214, 90))
    d.polygon([(0, 330), (180, 250), (380, 320), (560, 240), (768, 310), (768, 512), (0, 512)], fill=(90, 150, 70))
    d.rectangle([0, 420, W, H], fill=(120, 110, 100))  # road
    for x in range(0, W, 60):
        d.rectangle([x, 462, x + 30, 468], fill=(235, 235, 225))
    d.rectangle([140, 250, 330, 390], fill=(200, 120, 80))  # house
    d.polygon([(120, 255), (235, 170), (350, 255)], fill=(140, 50, 45))
    d.rectangle([210, 320, 255, 390], fill=(90, 60, 40))
    d.rectangle([160, 280, 200, 315], fill=(170, 210, 240))
    d.rectangle([275, 280, 315, 315], fill=(170, 210, 240))
    d.rectangle([470, 280, 490, 400], fill=(100, 70, 40))  # tree
    d.ellipse([410, 180, 550, 310], fill=(40, 110, 50))
    d.rounded_rectangle([520, 400, 700, 450], radius=12, fill=(30, 90, 180))  # car
    d.polygon([(560, 400), (585, 370), (650, 370), (675, 400)], fill=(30, 90, 180))
    d.ellipse([545, 435, 585, 475], fill=(25, 25, 25))
    d.ellipse([640, 435, 680, 475], fill=(25, 25, 25))
    arr = np.asarray(img.filter(ImageFilter.SMOOTH)).astype(np.int16)
    arr += rng.integers(-6, 7, size=arr.shape, dtype=np.int16)  # a little sensor noise
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
