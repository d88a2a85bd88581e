"""Training data: UTKFace (age, gender, race) and FER2013 with FER+ labels (emotion).

Images are read straight from the tar archives in the data directory (see
``footfall.config.ModelSettings.data_dir``), decoded once into one uint8 array per split
and cached as ``.npy`` files under the cache directory, so later runs start in seconds.
Missing labels are marked (-1 or NaN) and masked out of the loss for that head.

Example (needs the datasets)::

    val = load_split("val")
    val.images.shape[1:], val.images.dtype    # ((112, 112, 3), dtype('uint8'))
"""

from __future__ import annotations

import csv
import gzip
import logging
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from footfall.files import file_sha256
from footfall.labels import EMOTIONS, RACES

T = TypeVar("T")

log = logging.getLogger(__name__)

DATASETS = {
    # name: (tar archive, manifest)
    "utkface": ("utkface_128.tar", "utkface_128.csv"),
    "ferplus": ("ferplus_48.tar", "ferplus_48.csv"),
}
FERPLUS_VOTES = "ferplus_votes.csv"
# FER+'s ten vote categories (the votes_* columns of ferplus_votes.csv, in this order) and which
# of them are our emotions (contempt, unknown and not-a-face are not).
VOTE_NAMES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
              "unknown", "NF")
FERPLUS_TO_EMOTION = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happiness": "happy",
                      "sadness": "sad", "surprise": "surprise", "neutral": "neutral"}
# Position in VOTE_NAMES of each of our emotions, in EMOTIONS order.
_EMOTION_VOTE_INDEX = tuple(VOTE_NAMES.index({e: n for n, e in FERPLUS_TO_EMOTION.items()}[emotion])
                            for emotion in EMOTIONS)
# Published sha256 of the files in the shared data directory (see its README).
SHA256 = {
    "utkface_128.tar": "ff92b0c14b6158b0383bf0159e5cd0468e436917a7b613d228d7f47ba09a387f",
    "utkface_128.csv": "c236a473f75e866c15d13b310c0d4a45481c89efcd0772acd3328de3ddd4f97e",
    "ferplus_48.tar": "abc61203b4df182c9bf89b54d5bd654bdebd42fc62454ec335c5b389f7cca657",
    "ferplus_48.csv": "8e53ff8b2208b270e981d643bb2114896a9e02f0fc7c74d911a89eeba8d3f4e6",
    "ferplus_votes.csv": "d044b0372c67feef017658a0b566d15736b73251398738f3b244d947e22a5c14",
}


# The same train and val images packed small for the GPU machine (../shared/data/device):
# WebP in gzipped tars, no test split. Used when the full archives are not there.
PACK = {
    "utkface": ("utkface_112.tar.gz", "utkface_112.csv"),
    "ferplus": ("ferplus_48.tar.gz", "ferplus_48.csv"),
}
PACK_VOTES = "ferplus_votes.csv.gz"
PACK_SHA256 = {
    "utkface_112.tar.gz": "3db5794d4315db9353eee69eb65cfee8f74543bc8cf48875d855bc887042e060",
    "utkface_112.csv": "25297fc33bfc9c2f266bfc45b7c4445f18374a4fbf7970926cc87a26ca243543",
    "ferplus_48.tar.gz": "d73de5f01630e63419fa6eb3acb2507d1fa9bc352de7156f9a939fb001f32df0",
    "ferplus_48.csv": "660f5abca9c4b0b40962d1253fd194485ac2cc9fcf7383d48de279569e46a475",
    "ferplus_votes.csv.gz": "d85e586fe062138f15592e66685c7b77f5934f457307c6183d6544b7605a25a6",
}


@dataclass(frozen=True)
class Layout:
    """Which files hold the data: the full archives or the GPU-machine pack."""

    archives: dict[str, tuple[str, str]]
    votes: str
    sha256: dict[str, str]
    tag: str  # part of the cache folder's name


FULL_LAYOUT = Layout(DATASETS, FERPLUS_VOTES, SHA256, "")
PACK_LAYOUT = Layout(PACK, PACK_VOTES, PACK_SHA256, "_pack")


def save_arrays(obj, folder: Path) -> None:
    """A dataclass of numpy arrays as one ``.npy`` per field in ``folder``, then a ``done`` marker
    (the caches of decoded faces and of pipeline crops)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in fields(obj):
        np.save(folder / f"{f.name}.npy", getattr(obj, f.name))
    (folder / "done").touch()


def load_arrays(cls: type[T], folder: Path) -> T:
    """What ``save_arrays`` wrote for a ``cls``."""
    return cls(**{f.name: np.load(folder / f"{f.name}.npy") for f in fields(cls)})


class DatasetMissing(FileNotFoundError):
    """The training data is not in the data directory."""


@dataclass
class FaceSet:
    """Faces and their labels as parallel numpy arrays (missing label: -1, or NaN for age)."""

    images: np.ndarray  # (N, S, S, 3) uint8, RGB
    age: np.ndarray  # (N,) float32 years, NaN when unknown
    gender: np.ndarray  # (N,) int8 0 male / 1 female / -1
    race: np.ndarray  # (N,) int8 index into RACES / -1
    emotion: np.ndarray  # (N,) int8 index into EMOTIONS / -1
    emotion_votes: np.ndarray  # (N, 7) float32 FER+ vote shares, zeros when unknown
    dataset: np.ndarray  # (N,) int8 0 utkface / 1 ferplus
    # FER2013's own label of a FER face (index into EMOTIONS, -1 when unknown or not a FER face):
    # the expression the image was found by, where FER+'s crowd saw a face; not used by default.
    emotion_original: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.emotion_original is None:
            self.emotion_original = np.full(len(self.age), -1, np.int8)

    def __len__(self) -> int:
        return len(self.age)

    def save(self, folder: Path) -> None:
        save_arrays(self, folder)

    @staticmethod
    def load(folder: Path) -> FaceSet:
        return load_arrays(FaceSet, folder)

    def subset(self, index: np.ndarray) -> FaceSet:
        return FaceSet(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: list[FaceSet]) -> FaceSet:
        return FaceSet(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(FaceSet)})


def data_layout(data_dir: Path) -> Layout:
    """The full archives when present, else the pack; DatasetMissing when neither is complete."""
    for layout in (FULL_LAYOUT, PACK_LAYOUT):
        if all((Path(data_dir) / name).exists() for name in layout.sha256):
            return layout
    raise DatasetMissing(f"training data not found in {data_dir}: expected {', '.join(SHA256)} "
                         f"(or the GPU pack {', '.join(PACK_SHA256)}); set FOOTFALL_DATA_DIR to the folder "
                         f"holding them (see model/README.md, Data)")


def require_data(data_dir: Path) -> None:
    data_layout(data_dir)


def sha256_mismatches(folder: Path, expected: dict[str, str]) -> list[str]:
    """One line per file whose sha256 differs from the published one (or that is missing)."""
    problems = []
    for name, digest in expected.items():
        path = Path(folder) / name
        got = file_sha256(path) if path.is_file() else "missing"
        if got != digest:
            problems.append(f"{name}: expected sha256 {digest}, got {got}")
    return problems


def verify_data(data_dir: Path) -> None:
    """Check the archives against their published sha256 (once, before decoding them)."""
    problems = sha256_mismatches(data_dir, data_layout(data_dir).sha256)
    if problems:
        raise DatasetMissing(f"files in {data_dir} do not match their published sha256: {'; '.join(problems)}")


def vote_shares(votes: Sequence[int]) -> np.ndarray:
    """Share of the raw votes (10, VOTE_NAMES order) of each of our 7 emotions (EMOTIONS order),
    over the votes for those 7 only: the soft emotion target training learns from.

    >>> vote_shares([6, 0, 1, 1, 0, 0, 0, 0, 2, 0]).round(3).tolist()
    [0.0, 0.0, 0.0, 0.0, 0.125, 0.125, 0.75]
    """
    counts = np.asarray(votes, np.float32)[list(_EMOTION_VOTE_INDEX)]
    return counts / max(float(counts.sum()), 1.0)


def _read_votes(data_dir: Path) -> dict[str, tuple[np.ndarray, int]]:
    """FER+ vote shares over our 7 emotions and FER2013's original label (EMOTIONS index, -1 when
    the data README could not recover it), keyed by the image's name (fer0000001)."""
    name = data_layout(data_dir).votes
    votes: dict[str, tuple[np.ndarray, int]] = {}
    with (gzip.open(data_dir / name, "rt", newline="") if name.endswith(".gz") else
          open(data_dir / name, newline="")) as fh:
        for row in csv.DictReader(fh):
            if row["included"] == "1":
                original = row["fer2013_label"]
                votes[row["fer_name"]] = (vote_shares([int(row[f"votes_{n}"]) for n in VOTE_NAMES]),
                                          EMOTIONS.index(original) if original else -1)
    return votes


def _decode(data: bytes, size: int) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # grayscale -> 3 equal channels
    if img is None:
        raise ValueError("undecodable image in archive")
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    img = cv2.resize(img, (size, size), interpolation=interp)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_dataset(data_dir: Path, name: str, split: str, size: int) -> FaceSet:
    tar_name, csv_name = data_layout(data_dir).archives[name]
    with open(data_dir / csv_name, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    votes = _read_votes(data_dir) if name == "ferplus" else {}
    wanted, blobs = {r["file"] for r in rows}, {}
    with tarfile.open(data_dir / tar_name, "r:*") as tf:  # one pass: gzipped tars cannot seek cheaply
        for member in tf:
            if member.name in wanted:
                blobs[member.name] = tf.extractfile(member).read()
    with ThreadPoolExecutor(4) as pool:  # cv2 releases the GIL while decoding
        images = list(pool.map(lambda r: _decode(blobs[r["file"]], size), rows))
    n = len(rows)

    def idx(values: tuple[str, ...], key: str) -> np.ndarray:
        return np.array([values.index(r[key]) if r[key] else -1 for r in rows], np.int8)

    fer = [votes.get(Path(r["file"]).stem, (np.zeros(7, np.float32), -1)) for r in rows]

    return FaceSet(
        images=np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        age=np.array([float(r["age"]) if r["age"] else np.nan for r in rows], np.float32),
        gender=idx(("male", "female"), "gender"),
        race=idx(RACES, "race"),
        emotion=idx(EMOTIONS, "emotion"),
        emotion_votes=np.stack([shares for shares, _ in fer]) if n else np.zeros((0, 7), np.float32),
        dataset=np.full(n, 0 if name == "utkface" else 1, np.int8),
        emotion_original=np.array([original for _, original in fer], np.int8),
    )


def load_split(split: str, data_dir: Path | None = None, size: int = 112,
               cache_dir: Path | None = None) -> FaceSet:
    """Both datasets' faces of one split (train / val / test) at ``size`` x ``size``."""
    from footfall.config import ModelSettings

    settings = ModelSettings()
    data_dir = Path(data_dir or settings.data_dir)
    cache_dir = Path(cache_dir or settings.cache_dir) / "faces"
    # v2: FaceSet.emotion_original
    cache = cache_dir / f"{split}_{size}{data_layout(data_dir).tag}_v2"
    if (cache / "done").exists():
        return FaceSet.load(cache)
    log.info("decoding %s split from %s (cached afterwards in %s)", split, data_dir, cache)
    verify_data(data_dir)
    faces = FaceSet.concat([_read_dataset(data_dir, name, split, size) for name in DATASETS])
    faces.save(cache)
    return faces
