"""Draws the studio's example images with Pillow and numpy (nothing is downloaded).

Run from the repository root: `python assets/make_examples.py`. The PNGs are small and committed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
SIZE = (256, 256)


def gradient(top: tuple, bottom: tuple, size=SIZE) -> Image.Image:
    t = np.linspace(0, 1, size[1])[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)
    return Image.fromarray(np.repeat(rows, size[0], axis=1).astype(np.uint8), "RGB")


def house() -> Image.Image:
    """A small house on a hill under an evening sky."""
    image = gradient((92, 140, 205), (250, 200, 150))
    draw = ImageDraw.Draw(image)
    draw.ellipse((-80, 170, 340, 420), fill=(86, 140, 70))
    draw.rectangle((78, 120, 178, 200), fill=(225, 210, 180), outline=(90, 70, 50), width=2)
    draw.polygon([(68, 122), (128, 72), (188, 122)], fill=(160, 60, 45), outline=(90, 40, 30))
    draw.rectangle((116, 156, 140, 200), fill=(110, 70, 40))
    for x in (90, 152):
        draw.rectangle((x, 134, x + 18, 150), fill=(120, 170, 210), outline=(80, 60, 40))
    draw.rectangle((150, 80, 162, 104), fill=(120, 90, 80))
    draw.ellipse((200, 30, 232, 62), fill=(255, 240, 200))
    return image


def boat() -> Image.Image:
    """A sailing boat on a calm bay with hills behind."""
    image = gradient((150, 190, 230), (235, 240, 245))
    draw = ImageDraw.Draw(image)
    draw.polygon([(0, 150), (60, 110), (120, 140), (190, 100), (256, 135), (256, 160), (0, 160)], fill=(90, 120, 110))
    water = gradient((60, 110, 160), (30, 70, 120), size=(256, 96))
    image.paste(water, (0, 160))
    draw.polygon([(70, 190), (190, 190), (170, 212), (92, 212)], fill=(120, 60, 40))
    draw.line((128, 88, 128, 190), fill=(60, 40, 30), width=3)
    draw.polygon([(131, 92), (131, 184), (185, 184)], fill=(250, 250, 245), outline=(150, 150, 150))
    draw.polygon([(125, 100), (125, 184), (84, 184)], fill=(240, 235, 225), outline=(150, 150, 150))
    for y in range(220, 256, 9):
        draw.line((20 + y % 17, y, 90 + y % 23, y), fill=(150, 190, 220), width=1)
    return image


def room() -> Image.Image:
    """A table by a window: something for Fill to add or replace."""
    image = gradient((235, 228, 214), (205, 195, 178))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 190, 256, 256), fill=(150, 110, 80))
    draw.rectangle((150, 30, 236, 130), fill=(175, 210, 235), outline=(240, 240, 240), width=6)
    draw.line((193, 30, 193, 130), fill=(240, 240, 240), width=4)
    draw.line((150, 80, 236, 80), fill=(240, 240, 240), width=4)
    draw.rectangle((40, 150, 200, 162), fill=(120, 80, 50))
    draw.rectangle((52, 162, 62, 230), fill=(100, 65, 40))
    draw.rectangle((178, 162, 188, 230), fill=(100, 65, 40))
    draw.ellipse((70, 128, 104, 152), fill=(230, 230, 225), outline=(160, 160, 160))
    return image.filter(ImageFilter.SMOOTH)


EXAMPLES = {"example-house.png": house, "example-boat.png": boat, "example-room.png": room}


def main() -> None:
    for name, draw in EXAMPLES.items():
        draw().save(HERE / name, optimize=True)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
