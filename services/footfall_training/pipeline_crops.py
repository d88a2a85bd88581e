"""Dataset faces cropped the way the ingest worker crops camera faces (train-serve consistency).

The ingest worker finds faces with YuNet (``footfall.vision.FaceDetector``) and warps each onto
the five-point template with ``footfall.vision.align_face``. Dataset images are already tight
crops: UTKFace faces fill the 128x128 image and FER faces fill 48x48, so YuNet, which needs
some context around a face, runs on the image upscaled to 128x128 (FER) and framed by a black
border of half its size on each side (black finds more faces than replicated edges: 95 % vs
88 % of 400 FER+ test faces at the ingest threshold). The landmarks are then mapped back onto the
unpadded image and ``align_face`` warps the crop from it, exactly as the worker does from a
frame: where the aligned crop reaches past the image, ``align_face``'s own edge replication
fills it, as at the border of a camera frame. (Warping from the black-framed image instead
puts black corners into rotated crops; an interim model called 82 % of 250 such UTKFace test
faces female, against 42 % of their dataset crops.)

Samples where YuNet finds no face (at the ingest worker's threshold) keep the dataset crop
resized to 112x112 and are flagged in ``detected``, so an evaluation can report the
detection rate and the metrics with and without them. The result is cached as ``.npy`` arrays
under ``<cache_dir>/faces/<split>_112_pipeline_<key>/`` (key: a hash of everything that changes
the crops: template, padding, threshold), like ``footfall_training.data`` caches the dataset crops.
Labels and sample order are those of ``load_split(split)``, so both crop kinds pair up.

    python -m footfall_training.pipeline_crops --split test

Example (needs the datasets and the YuNet file):
    crops = load_pipeline_split("test")
    crops.faces.images.shape[1:], crops.detection_rate()
    # -> ((112, 112, 3), {"utkface": 0.9996, "ferplus": 0.9439})
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from footfall_training.data import DATASETS, FaceSet, _read_dataset, load_split, require_data
from footfall.vision import CROP_SIZE, FACE_TEMPLATE_112, FaceDetector, align_face, ensure_yunet

log = logging.getLogger(__name__)

SOURCE_SIZE = 128  # UTKFace's native size; FER's 48x48 is upscaled to it before detection
PAD_FRACTION = 0.5  # black border on each side, as a fraction of the source size
CROPS_VERSION = 3  # bump when the procedure changes in a way the cache key does not see


@dataclass
class PipelineCrops:
    """Pipeline-cropped faces, their labels, and which of them YuNet actually found."""

    faces: FaceSet  # images: aligned 112x112 crops (dataset crop resized where no face was found)
    detected: np.ndarray  # (N,) bool
    score: np.ndarray  # (N,) float32 detection score, 0 where none

    def __len__(self) -> int:
        return len(self.detected)

    def subset(self, index: np.ndarray) -> PipelineCrops:
        return PipelineCrops(self.faces.subset(index), self.detected[index], self.score[index])

    def detection_rate(self) -> dict[str, float]:
        """Share of samples with a detected face, per dataset."""
        return {name: float(self.detected[self.faces.dataset == i].mean())
                for i, name in enumerate(DATASETS) if (self.faces.dataset == i).any()}


def make_detector(score_threshold: float | None = None) -> FaceDetector:
    """YuNet configured as the ingest worker configures it (same model file, width, threshold)."""
    from footfall.config import IngestSettings

    settings = IngestSettings()
    threshold = settings.detection_threshold if score_threshold is None else score_threshold
    return FaceDetector(ensure_yunet(settings.models_dir), detect_width=settings.detect_width,
                        score_threshold=threshold, min_face_px=settings.min_face_px)


def source_image(image_rgb: np.ndarray, size: int = SOURCE_SIZE) -> np.ndarray:
    """The tight dataset crop at ``size`` x ``size`` in BGR (the order camera frames come in)."""
    if image_rgb.shape[:2] != (size, size):
        interp = cv2.INTER_AREA if image_rgb.shape[0] > size else cv2.INTER_LINEAR
        image_rgb = cv2.resize(image_rgb, (size, size), interpolation=interp)
    return cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)


def pad_for_detection(source_bgr: np.ndarray, pad_fraction: float = PAD_FRACTION) -> tuple[np.ndarray, int]:
    """``source_bgr`` framed by a black border (YuNet needs context around a face), and the border width.

    >>> framed, pad = pad_for_detection(np.zeros((128, 128, 3), np.uint8))
    >>> framed.shape, pad
    ((256, 256, 3), 64)
    """
    pad = int(round(source_bgr.shape[0] * pad_fraction))
    return cv2.copyMakeBorder(source_bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0)), pad


def pipeline_crop(image_rgb: np.ndarray, detector: FaceDetector) -> tuple[np.ndarray | None, float]:
    """The 112x112 RGB crop the ingest worker would publish for this face, and its score.

    Returns ``(None, 0.0)`` when YuNet finds no face. With several detections the one whose
    centre is nearest the image centre wins (the dataset's face; others are spurious).
    """
    source = source_image(image_rgb)
    framed, pad = pad_for_detection(source)
    dets = detector.detect(framed)
    if len(dets) == 0:
        return None, 0.0
    centre = np.array(framed.shape[1::-1], np.float32) / 2
    box_centres = dets.boxes[:, :2] + dets.boxes[:, 2:] / 2
    best = int(np.argmin(np.linalg.norm(box_centres - centre, axis=1)))
    crop_bgr = align_face(source, dets.landmarks[best] - pad, CROP_SIZE)
    return cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB), float(dets.scores[best])


def crop_faces(sources: np.ndarray, fallback: np.ndarray, detector: FaceDetector) -> PipelineCrops:
    """Pipeline crops of ``sources`` (N, S, S, 3) RGB; ``fallback`` (N, 112, 112, 3) where none is found.

    Labels are left empty here; ``prepare_split`` fills them.
    """
    images = fallback.copy()
    detected = np.zeros(len(sources), bool)
    score = np.zeros(len(sources), np.float32)
    for i, src in enumerate(sources):
        crop, s = pipeline_crop(src, detector)
        if crop is not None:
            images[i], detected[i], score[i] = crop, True, s
    n = len(sources)
    empty = FaceSet(images=images, age=np.full(n, np.nan, np.float32), gender=np.full(n, -1, np.int8),
                    race=np.full(n, -1, np.int8), emotion=np.full(n, -1, np.int8),
                    emotion_votes=np.zeros((n, 7), np.float32), dataset=np.zeros(n, np.int8))
    return PipelineCrops(empty, detected, score)


def cache_key(score_threshold: float) -> str:
    """Short hash of every parameter that changes the crops."""
    parts = [CROPS_VERSION, SOURCE_SIZE, PAD_FRACTION, CROP_SIZE, round(score_threshold, 4),
             FACE_TEMPLATE_112.round(4).tolist()]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:10]


def prepare_split(split: str, data_dir: Path | None = None, detector: FaceDetector | None = None) -> PipelineCrops:
    """Pipeline crops of both datasets of one split, in ``load_split(split)`` order (not cached)."""
    from footfall.config import ModelSettings

    data_dir = Path(data_dir or ModelSettings().data_dir)
    require_data(data_dir)
    detector = detector or make_detector()
    dataset_crops = load_split(split, data_dir=data_dir)
    parts = []
    for index, name in enumerate(DATASETS):
        sources = _read_dataset(data_dir, name, split, SOURCE_SIZE)
        rows = np.flatnonzero(dataset_crops.dataset == index)
        labelled = dataset_crops.subset(rows)
        # Same manifest rows in the same order, so labels must match one to one.
        assert np.array_equal(labelled.gender, sources.gender) and np.array_equal(labelled.emotion, sources.emotion)
        t0 = time.time()
        crops = crop_faces(sources.images, labelled.images, detector)
        labelled.images = crops.faces.images
        parts.append(PipelineCrops(labelled, crops.detected, crops.score))
        log.info("%s %s: %d faces, detected %.1f %% (%.1f ms each)", split, name, len(rows),
                 100 * crops.detected.mean() if len(rows) else 0, 1000 * (time.time() - t0) / max(1, len(rows)))
    return PipelineCrops(FaceSet.concat([p.faces for p in parts]), np.concatenate([p.detected for p in parts]),
                         np.concatenate([p.score for p in parts]))


def cache_path(split: str, cache_dir: Path | None = None, score_threshold: float | None = None) -> Path:
    from footfall.config import IngestSettings, ModelSettings

    threshold = IngestSettings().detection_threshold if score_threshold is None else score_threshold
    root = Path(cache_dir or ModelSettings().cache_dir) / "faces"
    return root / f"{split}_{CROP_SIZE}_pipeline_{cache_key(threshold)}"


def load_pipeline_split(split: str, data_dir: Path | None = None, cache_dir: Path | None = None,
                        score_threshold: float | None = None) -> PipelineCrops:
    """Pipeline crops of one split, computed once and cached as arrays."""
    cache = cache_path(split, cache_dir, score_threshold)
    if (cache / "done").exists():
        return PipelineCrops(FaceSet.load(cache), np.load(cache / "detected.npy"), np.load(cache / "score.npy"))
    log.info("preparing pipeline crops of the %s split (cached afterwards in %s)", split, cache)
    detector = make_detector(score_threshold)
    crops = prepare_split(split, data_dir, detector)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cache / "detected.npy", crops.detected)
    np.save(cache / "score.npy", crops.score)
    crops.faces.save(cache)  # writes the done marker last
    return crops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", action="append", choices=("train", "val", "test"),
                        help="split(s) to prepare (default: test)")
    parser.add_argument("--threshold", type=float, default=None, help="YuNet score threshold (default: ingest's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for split in args.split or ["test"]:
        t0 = time.time()
        crops = load_pipeline_split(split, score_threshold=args.threshold)
        rates = ", ".join(f"{k} {100 * v:.2f} %" for k, v in crops.detection_rate().items())
        print(f"{split}: {len(crops)} faces, detected: {rates}; fallback (dataset crop) for "
              f"{int((~crops.detected).sum())}; cache {cache_path(split, score_threshold=args.threshold)} "
              f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
