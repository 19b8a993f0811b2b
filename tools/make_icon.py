"""Draw web/icon.png, the pack's 256×256 registry icon (a colour map of three blobs)."""

from pathlib import Path

from PIL import Image, ImageDraw


def main(out: Path = Path(__file__).resolve().parents[1] / "web" / "icon.png") -> None:
    img = Image.new("RGB", (256, 256), (24, 24, 28))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([16, 16, 240, 240], radius=36, fill=(40, 44, 52))
    d.ellipse([36, 60, 170, 194], fill=(64, 170, 230))
    d.polygon([(120, 40), (222, 92), (170, 170)], fill=(240, 170, 60))
    d.rounded_rectangle([110, 140, 220, 220], radius=18, fill=(120, 200, 110))
    d.ellipse([150, 168, 166, 184], fill=(255, 255, 255))  # a click
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
