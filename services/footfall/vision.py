"""Face detection (YuNet) and five-point alignment to 112x112: the one function used both by
the ingest worker and by training-data preparation, so the model learns on what it receives.

The YuNet model file is not in the repository: ``ensure_yunet`` downloads it from the
opencv_zoo release with a pinned sha256 into the models directory when missing
(``FOOTFALL_MODELS_DIR``; on the development machines it points at ``../shared/models``).

Example (needs the YuNet file):
    import numpy as np
    det = FaceDetector(ensure_yunet(IngestSettings().models_dir))
    faces = det.detect(frame_bgr)
    crops = [align_face(frame_bgr, lm) for lm in faces.landmarks]
"""

from __future__ import annotations

import logging
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from footfall.files import file_sha256

log = logging.getLogger(__name__)

YUNET_FILE = "yunet/face_detection_yunet_2023mar.onnx"
YUNET_URL = ("https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
             "face_detection_yunet_2023mar.onnx")
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
CROP_SIZE = 112

# Where the five landmarks (right eye, left eye, nose tip, right and left mouth corner, as
# YuNet orders them: the subject's right eye first) land in a 112x112 crop. Fitted to the
# framing of the training faces (UTKFace "aligned & cropped") by
# scripts/fit_alignment_template.py (medians over 1,496 faces, made symmetric about the
# vertical axis as flip augmentation makes the training set), so serving crops look like training crops.
FACE_TEMPLATE_112 = np.array([
    [33.06, 30.63],
    [78.94, 30.63],
    [56.00, 52.70],
    [36.20, 72.80],
    [75.80, 72.80],
], dtype=np.float32)


class DetectorUnavailable(RuntimeError):
    """The YuNet model file is missing and could not be downloaded."""


def ensure_yunet(models_dir: Path, url: str = YUNET_URL) -> Path:
    """Path of the YuNet file in ``models_dir``, downloading and verifying it when missing."""
    path = Path(models_dir) / YUNET_FILE
    if path.exists():
        if file_sha256(path) != YUNET_SHA256:
            raise DetectorUnavailable(f"{path} has the wrong sha256 (expected {YUNET_SHA256}); delete it to re-download")
        return path
    log.info("downloading YuNet face detector to %s", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as fh:
            fh.write(resp.read())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DetectorUnavailable(f"YuNet model not in {models_dir} and download from {url} failed: {exc}. "
                                  f"Set FOOTFALL_MODELS_DIR to a folder holding {YUNET_FILE}.") from exc
    if file_sha256(tmp) != YUNET_SHA256:
        tmp.unlink()
        raise DetectorUnavailable(f"downloaded YuNet file has the wrong sha256 (expected {YUNET_SHA256})")
    tmp.replace(path)
    return path


@dataclass
class Detections:
    """Faces found in one frame, in full-frame pixel coordinates."""

    boxes: np.ndarray  # (N, 4) float32 x, y, w, h
    landmarks: np.ndarray  # (N, 5, 2) float32
    scores: np.ndarray  # (N,) float32

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32))

    def filter(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.landmarks[keep], self.scores[keep])


class FaceDetector:
    """YuNet on frames scaled to ``detect_width`` (faster; coordinates mapped back to full size)."""

    def __init__(self, model_path: Path, detect_width: int = 640, score_threshold: float = 0.75,
                 nms_threshold: float = 0.3, min_face_px: int = 0) -> None:
        self.detect_width = detect_width
        self.min_face_px = min_face_px
        self._model_path = str(model_path)
        self._score, self._nms = score_threshold, nms_threshold
        self._net = cv2.FaceDetectorYN.create(self._model_path, "", (320, 320), score_threshold, nms_threshold, 5000)
        self._input_size: tuple[int, int] | None = None

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        h, w = frame_bgr.shape[:2]
        scale = min(1.0, self.detect_width / w) if self.detect_width else 1.0
        small = cv2.resize(frame_bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) \
            if scale < 1.0 else frame_bgr
        size = (small.shape[1], small.shape[0])
        if size != self._input_size:
            self._net.setInputSize(size)
            self._input_size = size
        _, raw = self._net.detect(small)
        if raw is None or len(raw) == 0:
            return Detections.empty()
        raw = raw.astype(np.float32)
        dets = Detections(boxes=raw[:, 0:4] / scale, landmarks=raw[:, 4:14].reshape(-1, 5, 2) / scale,
                          scores=raw[:, 14].copy())
        if self.min_face_px:
            dets = dets.filter(np.minimum(dets.boxes[:, 2], dets.boxes[:, 3]) >= self.min_face_px)
        return dets


def alignment_matrix(landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """2x3 similarity transform taking the five landmarks onto the template (scaled to ``size``)."""
    template = FACE_TEMPLATE_112 * (size / CROP_SIZE)
    points = np.asarray(landmarks, np.float32)
    if points.shape != (5, 2) or not np.isfinite(points).all() or np.ptp(points, axis=0).max() < 1.0:
        raise ValueError("cannot align face: degenerate landmarks")
    matrix, _ = cv2.estimateAffinePartial2D(points, template, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("cannot align face: degenerate landmarks")
    return matrix


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The face of ``image`` warped so its landmarks sit on the template: a ``size`` x ``size`` crop.

    >>> img = np.zeros((200, 200, 3), np.uint8)
    >>> align_face(img, FACE_TEMPLATE_112 + 40).shape
    (112, 112, 3)
    """
    matrix = alignment_matrix(landmarks, size)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
