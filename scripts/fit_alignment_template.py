"""Fit the 112x112 alignment template (footfall.vision.FACE_TEMPLATE_112) to the training faces.

Runs YuNet on UTKFace training images (padded, since the faces fill the image), maps the
five landmarks into the 112x112 training crop, and prints their median positions. Serving
crops aligned to this template are framed like the faces the model was trained on.

    .venv/bin/python scripts/fit_alignment_template.py --count 2000
"""

import argparse

import cv2
import numpy as np

from footfall.config import IngestSettings
from footfall_training.data import load_split
from footfall.vision import FaceDetector, ensure_yunet


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    faces = load_split("train")
    utk = np.flatnonzero(faces.dataset == 0)[: args.count]
    det = FaceDetector(ensure_yunet(IngestSettings().models_dir), detect_width=0, score_threshold=0.8)
    pad = 56
    points = []
    for i in utk:
        img = cv2.cvtColor(faces.images[i], cv2.COLOR_RGB2BGR)
        big = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        d = det.detect(big)
        if len(d) == 1:
            points.append(d.landmarks[0] - pad)
    pts = np.stack(points)
    med = np.median(pts, axis=0)
    print(f"faces with one detection: {len(pts)}/{len(utk)}")
    print("FACE_TEMPLATE_112 = np.array([")
    for x, y in med:
        print(f"    [{x:.4f}, {y:.4f}],")
    print("], dtype=np.float32)")
    print("spread (IQR px):", np.round(np.percentile(pts, 75, 0) - np.percentile(pts, 25, 0), 2).tolist())


if __name__ == "__main__":
    main()
