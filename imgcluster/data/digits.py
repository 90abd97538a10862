"""The embedded demo data: scikit-learn's bundled handwritten digits as an image folder.

1,797 greyscale 8×8 digits (0-9) ship inside scikit-learn, so ``imgcluster demo`` needs no
download. They are written as PNG class folders plus a labels.csv (path,label), the same layout a
user's labelled folder would have.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(folder: Path) -> tuple[Path, dict[str, str]]:
    """Write ``folder/<digit>/<index>.png`` and ``folder/labels.csv``; return (folder, labels).

    Existing identical files are left alone, so a second demo reuses the decode cache.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    labels: dict[str, str] = {}
    for i, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        rel = f"{target}/{i:04d}.png"
        path = folder / rel
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            # 0..16 ink values → 0..255, white digits on black as in the original scans
            img = np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(path)  # 2-D uint8: mode L
        labels[rel] = str(target)
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("path", "label"))
        writer.writerows(sorted(labels.items()))
    return folder, labels
