"""A folder of real photos without labels, for running a pretrained detector through the pipeline offline: every
photo that ships in scikit-image's wheel (grayscale ones as RGB), each as ``--crops`` crops at several places,
sizes and aspect ratios, plus the photo whole. Deterministic: the same folder every time.

    python benchmarks/photo_folder.py photos --crops 12
    pipeline run --config pnet.yaml --model tests.helpers:pnet --weights pnet.pt --data photos --target raspberry-pi-4
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SUFFIXES = (".png", ".jpg")
SKIPPED = ("chessboard", "phantom", "text", "page", "color", "logo")  # test patterns and scans, not photos


def photos() -> list[tuple[str, np.ndarray]]:
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    found = []
    for path in sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and not p.name.startswith(SKIPPED)):
        image = Image.open(path)
        found.append((path.stem, np.asarray(image.convert("RGB"))))
    return found


def write_folder(out: Path, crops: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, photo in photos():
        height, width = photo.shape[:2]
        Image.fromarray(photo).save(out / f"{name}.png")
        for i in range(crops):
            # from half the photo to nearly all of it, sliding from the top-left corner to the bottom-right
            h, w = height // 2 + (height // 2 - 1) * i // crops, width // 2 + (width // 2 - 1) * ((i * 5) % crops) // crops
            top, left = (height - h) * i // max(crops - 1, 1), (width - w) * ((i * 7) % crops) // max(crops - 1, 1)
            Image.fromarray(photo[top:top + h, left:left + w]).save(out / f"{name}-{i:02d}.png")
        written += crops + 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--crops", type=int, default=12, help="crops of each photo (default 12)")
    args = parser.parse_args()
    print(f"{write_folder(args.out, args.crops)} images in {args.out}")


if __name__ == "__main__":
    main()
