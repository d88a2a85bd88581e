"""Rebuild the training data (UTKFace; FER2013 with FER+ labels) from pinned GitHub snapshots.

``footfall-data`` makes the five files that ``footfall_training.data`` reads (``utkface_128.tar``
/ ``.csv``, ``ferplus_48.tar`` / ``.csv``, ``ferplus_votes.csv``) from three public repository
snapshots, following the rules of ``../shared/data/README.md``, and checks them against the
published sha256 (``footfall_training.data.SHA256``)::

    footfall-data download                           # needs internet; then runs prepare
    footfall-data prepare --sources ~/snapshots      # snapshots as .tar.gz or extracted folders
    footfall-data verify --dir ~/.cache/footfall/data
    footfall-data crosssource --sources /work/.mirror   # optional faces from other sources (footfall_training.crosssource)

``--sources`` holds, per snapshot, the codeload tarball ``<repo>-<commit>.tar.gz`` as downloaded,
or the folder ``<repo>-<commit>/`` (or ``<repo>/``) it extracts to.

The labelling and split rules are plain functions:

>>> parse_utkface_name("24_0_1_20170116220224657 .jpg.chip.jpg")
UtkLabels(age=24, gender='male', race='black', name='24_0_1_20170116220224657.jpg.chip.jpg')
>>> parse_utkface_name("39_1_20170116174525125.jpg.chip.jpg").race is None
True
>>> utkface_split("100_0_0_20170112213500903.jpg.chip.jpg")
'test'
>>> ferplus_majority([6, 0, 1, 1, 0, 0, 0, 0, 2, 0])
Majority(emotion='neutral', status='ok')
>>> ferplus_majority([4, 0, 0, 1, 3, 2, 0, 0, 0, 0]).included
False
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple, TypeVar

import cv2
import numpy as np

from footfall.labels import EMOTIONS, GENDERS, RACES
from footfall_training.data import (FERPLUS_TO_EMOTION, SHA256, VOTE_NAMES, DatasetMissing, data_layout,
                                 sha256_mismatches)

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Overridable so that tests can serve the tarballs from a file:// folder.
CODELOAD = "https://codeload.github.com"


@dataclass(frozen=True)
class Snapshot:
    """One pinned GitHub repository snapshot and the folders of it that the build reads."""

    owner: str
    repo: str
    commit: str
    folders: tuple[str, ...]

    def url(self, base: str) -> str:
        return f"{base}/{self.owner}/{self.repo}/tar.gz/{self.commit}"

    @property
    def archive_name(self) -> str:
        return f"{self.repo}-{self.commit}.tar.gz"

    @property
    def folder_name(self) -> str:  # codeload's tarballs hold everything under this folder
        return f"{self.repo}-{self.commit}"


UTK_FOLDER = "data/UTKFace/unlabeled"
# FER+ folder, our split, and FER2013's own name of that split (its "Usage" column).
FER_FOLDERS = (
    ("data/FER2013Train", "train", "Training"),
    ("data/FER2013Valid", "val", "PublicTest"),
    ("data/FER2013Test", "test", "PrivateTest"),
)
# darkbit404/FaceExp sorts all FER2013 images into data/<original label>/.
FACEEXP_LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

SNAPSHOTS = {
    "utkface": Snapshot("mattans", "AgeProgression", "2d937c615a3d10408db0ea795842e569bc9eedb0", (UTK_FOLDER,)),
    "ferplus": Snapshot("tessav", "crowd-emotion", "95c07555f685e8b776d03c66406b49faa402a349",
                        tuple(folder for folder, _, _ in FER_FOLDERS)),
    "fer2013": Snapshot("darkbit404", "FaceExp", "616dda5c946ded0fb53210ff1bccbfc0bbf1ab7a",
                        tuple(f"data/{label}" for label in FACEEXP_LABELS)),
}

MANIFEST_COLUMNS = ("file", "age", "gender", "race", "emotion", "split")
JPEG_QUALITY = 92
UTK_SIZE = 128
FER_SIZE = 48
UTK_SPLIT_SALT = "utkface-v1"
# Columns of ferplus_votes.csv: the 10 vote counts in VOTE_NAMES order (that of FER+'s label.csv files).
VOTES_COLUMNS = ("fer_name", "fer2013_usage", "split", *(f"votes_{n}" for n in VOTE_NAMES),
                 "ferplus_majority", "status", "included", "file", "fer2013_label")
# Original-label matching: a FER+ image takes the label of its closest FaceExp image when their
# mean absolute pixel difference is at most this; candidates within +1 of the best count as twins.
MATCH_MAX_MAD = 6.0
MATCH_TWIN_MARGIN = 1.0
MATCH_CANDIDATES = 5
# FER+ images per similarity block (2048 x 35,887 float32, ~300 MB); kept as in the published
# build, since BLAS may round another block shape differently and shortlists hinge on exact ties.
MATCH_CHUNK = 2048


# ---- UTKFace rules ----------------------------------------------------------------------------

# age_gender_race_datetime.jpg.chip.jpg; three files lack the race, and two are malformed
# ("..657 .jpg.chip.jpg" with a space, "..357jpg.chip.jpg" without the dot).
_UTK_NAME = re.compile(r"(?P<age>\d+)_(?P<gender>\d)_(?:(?P<race>\d)_)?(?P<stamp>\d+)\s*\.?jpg\.chip\.jpg")


class UtkLabels(NamedTuple):
    """Labels of a UTKFace image and its normalised file name (the tar member's base name)."""

    age: int
    gender: str
    race: str | None
    name: str


def parse_utkface_name(name: str) -> UtkLabels:
    """Age, gender and race from a UTKFace file name; ValueError when it does not parse.

    >>> parse_utkface_name("55_0_0_20170116232725357jpg.chip.jpg").name
    '55_0_0_20170116232725357.jpg.chip.jpg'
    >>> parse_utkface_name("1_1_4_20161221193016140.jpg.chip.jpg")[:3]
    (1, 'female', 'others')
    """
    match = _UTK_NAME.fullmatch(name)
    if not match:
        raise ValueError(f"not a UTKFace file name: {name!r}")
    gender, race = int(match["gender"]), match["race"]
    if gender >= len(GENDERS) or (race is not None and int(race) >= len(RACES)):
        raise ValueError(f"label code out of range in {name!r}")
    fields = [match["age"], match["gender"], race, match["stamp"]]
    canonical = "_".join(f for f in fields if f is not None) + ".jpg.chip.jpg"
    return UtkLabels(int(match["age"]), GENDERS[gender], None if race is None else RACES[int(race)], canonical)


def split_from_key(key: str, salt: str = UTK_SPLIT_SALT) -> str:
    """80/10/10 train/val/test from the first 32 bits of sha256("<salt>:<key>"), modulo 100."""
    bucket = int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"


def utkface_split(name: str) -> str:
    """Split of a UTKFace image (its original file name) that has no duplicate."""
    return split_from_key(name)


def dhash64(image: np.ndarray) -> str:
    """64-bit difference hash (9x8 grey thumbnail, left < right per pixel pair), 16 hex digits.

    >>> ramp = np.tile(np.arange(200, dtype=np.uint8), (200, 1))
    >>> dhash64(ramp), dhash64(ramp[:, ::-1].copy()), dhash64(np.full((200, 200), 7, np.uint8))
    ('ffffffffffffffff', '0000000000000000', '0000000000000000')
    """
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    return np.packbits(small[:, 1:] > small[:, :-1]).tobytes().hex()


def assign_splits(fingerprints: Mapping[str, str]) -> dict[str, str]:
    """Split per original name; names with the same fingerprint (dHash) share the split of the
    alphabetically first of them, so that a duplicated face never sits in two splits."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name, fingerprint in fingerprints.items():
        groups[fingerprint].append(name)
    return {name: split_from_key(min(names)) for names in groups.values() for name in names}


def utkface_manifest_row(labels: UtkLabels, split: str) -> list[str]:
    return [f"utkface/{labels.name}", f"{float(labels.age):.1f}", labels.gender, labels.race or "", "", split]


# ---- FER+ rules -------------------------------------------------------------------------------

class Majority(NamedTuple):
    """FER+ majority label (one of EMOTIONS, None when left out) and why."""

    emotion: str | None
    status: str  # ok / no_majority / no_votes / majority_contempt / majority_unknown / majority_NF

    @property
    def included(self) -> bool:
        return self.emotion is not None


def ferplus_majority(votes: Sequence[int]) -> Majority:
    """The FER+ "majority" label of the 10 crowd votes (in VOTE_NAMES order).

    Single votes are outliers and dropped; the top category must hold more than half of the
    remaining votes and be one of our 7 emotions (contempt, unknown and not-a-face are left out).

    >>> ferplus_majority([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    Majority(emotion=None, status='no_votes')
    >>> ferplus_majority([0, 0, 0, 0, 0, 0, 0, 6, 4, 0])
    Majority(emotion=None, status='majority_contempt')
    >>> ferplus_majority([5, 5, 0, 0, 0, 0, 0, 0, 0, 0]).status
    'no_majority'
    """
    kept = [v if v > 1 else 0 for v in votes]
    total, top = sum(kept), max(kept)
    if total == 0:
        return Majority(None, "no_votes")
    if kept.count(top) > 1 or 2 * top <= total:
        return Majority(None, "no_majority")
    category = VOTE_NAMES[kept.index(top)]
    if category not in FERPLUS_TO_EMOTION:
        return Majority(None, f"majority_{category}")
    return Majority(FERPLUS_TO_EMOTION[category], "ok")


def ferplus_rows(name: str, usage: str, split: str, votes: Sequence[int],
                 original_label: str) -> tuple[list[str] | None, list[str]]:
    """Manifest row (None when left out) and ferplus_votes.csv row of one FER+ image (stem name)."""
    majority = ferplus_majority(votes)
    member = f"ferplus/{name}.jpg" if majority.included else ""
    manifest = [member, "", "", "", majority.emotion, split] if majority.included else None
    votes_row = [name, usage, split, *map(str, votes), majority.emotion or "", majority.status,
                 str(int(majority.included)), member, original_label]
    return manifest, votes_row


# ---- original FER2013 labels (pixel matching against FaceExp) ---------------------------------

def _match_feature(image48: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 24x24 thumbnail: a dot product of two is their correlation."""
    t = cv2.resize(image48, (24, 24), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    norm = np.linalg.norm(t)
    return t / norm if norm > 0 else t


def match_original_labels(images: Sequence[np.ndarray], references: Sequence[np.ndarray],
                          reference_labels: Sequence[str]) -> list[str]:
    """Original FER2013 label of each 48x48 image: that of its pixel twin among the references,
    or "" when there is none (MAD above MATCH_MAX_MAD) or the twins disagree (duplicates of
    FER2013 that carry different labels)."""
    refs = np.stack(references)
    ref_features = np.stack([_match_feature(r) for r in refs])
    features = np.stack([_match_feature(i) for i in images])
    labels: list[str] = []
    for start in range(0, len(images), MATCH_CHUNK):
        similar = features[start:start + MATCH_CHUNK] @ ref_features.T
        # The default (unstable) sort, as in the published build: it picks which of more than
        # MATCH_CANDIDATES identical images make the shortlist.
        shortlist = np.argsort(-similar, axis=1)[:, :MATCH_CANDIDATES]
        for offset, candidates in enumerate(shortlist):
            image = images[start + offset].astype(np.float32)
            mads = [float(np.abs(image - refs[c].astype(np.float32)).mean()) for c in candidates]
            best = int(np.argmin(mads))
            twins = {reference_labels[c] for c, mad in zip(candidates, mads)
                     if mad <= mads[best] + MATCH_TWIN_MARGIN}
            ok = mads[best] <= MATCH_MAX_MAD and len(twins) == 1
            labels.append(reference_labels[candidates[best]] if ok else "")
    return labels


# ---- writing ----------------------------------------------------------------------------------

def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG with optimised Huffman tables (smaller, same pixels)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


@contextmanager
def _written_then_renamed(path: Path) -> Iterator[Path]:
    """A .part path to write, moved over ``path`` only when the block succeeds: an interrupted
    build or download never leaves a file that looks complete."""
    part = path.with_name(path.name + ".part")
    yield part
    os.replace(part, path)


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """Uncompressed USTAR tar with fixed metadata (mtime 0, root, 0644): rebuilds are byte-identical."""
    with _written_then_renamed(Path(path)) as part:
        with tarfile.open(part, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    with _written_then_renamed(Path(path)) as part:
        with open(part, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


def _parallel(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    with ThreadPoolExecutor(max(workers, 1)) as pool:  # OpenCV releases the GIL while (de)coding
        return list(pool.map(fn, items))


# ---- building ---------------------------------------------------------------------------------

def build_utkface(folder: Path, dest: Path, workers: int = 4) -> int:
    """utkface_128.tar / .csv from the 200x200 UTKFace JPEGs in ``folder``; returns the image count."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))  # the published tar's order
    entries: list[tuple[str, UtkLabels]] = []
    for name in names:
        try:
            entries.append((name, parse_utkface_name(name)))
        except ValueError as exc:
            log.warning("skipping %s: %s", name, exc)

    def convert(name: str) -> tuple[str, bytes] | None:
        image = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if image is None:  # e.g. a Git LFS pointer instead of the image
            return None
        small = cv2.resize(image, (UTK_SIZE, UTK_SIZE), interpolation=cv2.INTER_AREA)
        return dhash64(image), encode_jpeg(small)

    # The re-encoded JPEGs stay in memory (~120 MB): the splits need every dHash before writing.
    converted = _parallel(convert, [name for name, _ in entries], workers)
    kept = [(name, labels, result) for (name, labels), result in zip(entries, converted) if result is not None]
    for (name, _), result in zip(entries, converted):
        if result is None:
            log.warning("skipping %s: not a decodable image", name)
    splits = assign_splits({name: result[0] for name, _, result in kept})
    write_tar(dest / "utkface_128.tar", ((f"utkface/{labels.name}", result[1]) for _, labels, result in kept))
    write_csv(dest / "utkface_128.csv", MANIFEST_COLUMNS,
              (utkface_manifest_row(labels, splits[name]) for name, labels, _ in kept))
    log.info("UTKFace: %d images (%d skipped)", len(kept), len(names) - len(kept))
    return len(kept)


def read_vote_file(path: Path) -> list[tuple[str, list[int]]]:
    """(image file name, 10 votes) per row of a FER+ label.csv (name, face box, votes...), sorted."""
    with open(path, newline="") as fh:
        rows = [row for row in csv.reader(fh) if row]
    return sorted((row[0], [int(v) for v in row[2:12]]) for row in rows)


def load_ferplus_images(root: Path, workers: int = 4) -> list[tuple[str, str, str, list[int], np.ndarray]]:
    """(stem, usage, split, votes, 48x48 grey image) of every readable FER+ image, in build order."""
    entries = [(root / folder / name, usage, split, votes)
               for folder, split, usage in FER_FOLDERS
               for name, votes in read_vote_file(root / folder / "label.csv")]
    images = _parallel(lambda e: cv2.imread(str(e[0]), cv2.IMREAD_GRAYSCALE), entries, workers)
    loaded = []
    for (path, usage, split, votes), image in zip(entries, images):
        if image is None or image.shape != (FER_SIZE, FER_SIZE):
            log.warning("skipping %s: not a %dx%d image", path, FER_SIZE, FER_SIZE)
            continue
        loaded.append((path.stem, usage, split, votes, image))
    return loaded


def load_faceexp(root: Path, workers: int = 4) -> tuple[list[np.ndarray], list[str]]:
    """FaceExp's FER2013 images (upscaled JPEGs) back at 48x48, and their original labels."""
    paths = [(root / "data" / label / name, label) for label in FACEEXP_LABELS
             for name in sorted(os.listdir(root / "data" / label)) if name.endswith(".jpg")]

    def read(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"{path}: not a decodable image")
        return cv2.resize(image, (FER_SIZE, FER_SIZE), interpolation=cv2.INTER_AREA)

    return _parallel(read, [p for p, _ in paths], workers), [label for _, label in paths]


def build_ferplus(root: Path, faceexp_root: Path | None, dest: Path, workers: int = 4) -> int:
    """ferplus_48.tar / .csv and ferplus_votes.csv from the FER+ snapshot (``root``); the original
    FER2013 labels come from FaceExp (left empty without it). Returns the number of images kept."""
    faces = load_ferplus_images(root, workers)
    originals = [""] * len(faces)
    if faceexp_root is not None:
        references, reference_labels = load_faceexp(faceexp_root, workers)
        originals = match_original_labels([f[4] for f in faces], references, reference_labels)
    members, manifest, votes_rows = [], [], []
    for (stem, usage, split, votes, image), original in zip(faces, originals):
        row, votes_row = ferplus_rows(stem, usage, split, votes, original)
        votes_rows.append(votes_row)
        if row is not None:
            manifest.append(row)
            members.append((row[0], encode_jpeg(image)))
    write_tar(dest / "ferplus_48.tar", members)
    write_csv(dest / "ferplus_48.csv", MANIFEST_COLUMNS, manifest)
    write_csv(dest / "ferplus_votes.csv", VOTES_COLUMNS, votes_rows)
    log.info("FER+: %d of %d images have a majority label", len(members), len(faces))
    return len(members)


# ---- sources ----------------------------------------------------------------------------------

def _extract_folders(archive: Path, folders: Sequence[str], dest: Path) -> Path:
    """Extract the regular files under ``folders`` of a codeload tarball (one top folder) into ``dest``."""
    prefixes = tuple(f"{f}/" for f in folders)
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            inner = PurePosixPath(*PurePosixPath(member.name).parts[1:])  # drop <repo>-<commit>/
            if not member.isfile() or not str(inner).startswith(prefixes) or ".." in inner.parts:
                continue
            target = dest.joinpath(*inner.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return dest


def locate_snapshot(snapshot: Snapshot, sources: Path, scratch: Path) -> Path:
    """Root of a snapshot in ``sources``: an extracted folder, else its tarball extracted to ``scratch``."""
    for candidate in (sources / snapshot.folder_name, sources / snapshot.repo):
        if all((candidate / folder).is_dir() for folder in snapshot.folders):
            return candidate
    archive = sources / snapshot.archive_name
    if archive.is_file():
        log.info("extracting %s", archive.name)
        root = _extract_folders(archive, snapshot.folders, scratch / snapshot.repo)
        missing = [f for f in snapshot.folders if not (root / f).is_dir()]
        if missing:
            raise FileNotFoundError(f"{archive} lacks {', '.join(missing)}")
        return root
    raise FileNotFoundError(f"snapshot {snapshot.owner}/{snapshot.repo}@{snapshot.commit[:12]} not in {sources}: "
                            f"expected {snapshot.archive_name} or a folder {snapshot.folder_name}/ "
                            f"holding {', '.join(snapshot.folders)} (footfall-data download fetches it)")


def prepare(sources: Path, dest: Path, check: bool = True, workers: int | None = None) -> list[str]:
    """Build the five data files in ``dest`` from the snapshots in ``sources``; with ``check``,
    return the sha256 mismatches against ``footfall_training.data.SHA256`` (the files stay)."""
    sources, dest = Path(sources), Path(dest)
    workers = workers or min(4, os.cpu_count() or 1)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".footfall-data-", dir=dest) as scratch:
        roots = {key: locate_snapshot(snap, sources, Path(scratch)) for key, snap in SNAPSHOTS.items()}
        build_utkface(roots["utkface"] / UTK_FOLDER, dest, workers)
        build_ferplus(roots["ferplus"], roots["fer2013"], dest, workers)
    return sha256_mismatches(dest, SHA256) if check else []


# ---- download ---------------------------------------------------------------------------------

def fetch(url: str, path: Path, timeout_s: float = 60.0) -> Path:
    """Stream ``url`` to ``path`` (through ``path.part``)."""
    with _written_then_renamed(Path(path)) as part:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    return Path(path)


def download(sources: Path, base: str | None = None, snapshots: Mapping[str, Snapshot] | None = None) -> list[Path]:
    """Fetch the snapshot tarballs (default: the training data's) not yet in ``sources``. Their bytes
    are not pinned (GitHub compresses on the fly): the sha256 of the prepared files is the integrity check."""
    sources = Path(sources)
    sources.mkdir(parents=True, exist_ok=True)
    paths = []
    for snapshot in (snapshots or SNAPSHOTS).values():
        path = sources / snapshot.archive_name
        if not path.is_file():
            url = snapshot.url(base or CODELOAD)
            log.info("downloading %s", url)
            fetch(url, path)
        paths.append(path)
    return paths


# ---- command line -----------------------------------------------------------------------------

def _report_prepare(mismatches: list[str], dest: Path) -> int:
    if not mismatches:
        print(f"footfall-data: {len(SHA256)} files in {dest} match their published sha256")
        return 0
    for line in mismatches:
        print(f"footfall-data: sha256 mismatch: {line}", file=sys.stderr)
    print(f"footfall-data: the files were left in {dest}; a different OpenCV build encodes other "
          f"JPEG bytes, and changed snapshots other content", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> None:
    from footfall.config import ModelSettings

    parser = argparse.ArgumentParser(prog="footfall-data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="fetch the three GitHub snapshots, then prepare")
    get.add_argument("--dest", type=Path, help="data directory (default: FOOTFALL_DATA_DIR)")
    get.add_argument("--sources", type=Path, help="where the tarballs go (default: DEST/sources)")
    make = commands.add_parser("prepare", help="build the data files from snapshots already here")
    make.add_argument("--sources", type=Path, required=True, help="folder with the snapshots")
    make.add_argument("--dest", type=Path, help="data directory (default: FOOTFALL_DATA_DIR)")
    check = commands.add_parser("verify", help="check the data files against their published sha256")
    check.add_argument("--dir", type=Path, help="data directory (default: FOOTFALL_DATA_DIR)")
    from footfall_training import crosssource

    crosssource.add_command(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == crosssource.COMMAND:
        parser.exit(crosssource.run_command(args))
    default_dir = Path(ModelSettings().data_dir)

    if args.command == "verify":
        folder = args.dir or default_dir
        try:
            expected = data_layout(folder).sha256
        except DatasetMissing as exc:
            parser.exit(2, f"footfall-data: {exc}\n")
        mismatches = sha256_mismatches(folder, expected)
        for line in mismatches:
            print(f"footfall-data: sha256 mismatch: {line}", file=sys.stderr)
        if not mismatches:
            print(f"footfall-data: {len(expected)} files in {folder} match their published sha256")
        parser.exit(1 if mismatches else 0)

    dest = args.dest or default_dir
    sources = args.sources or dest / "sources"
    try:
        if args.command == "download":
            download(sources)
        mismatches = prepare(sources, dest)
    except (OSError, ValueError) as exc:  # missing snapshot, unreachable URL, unreadable image
        parser.exit(2, f"footfall-data: {exc}\n")
    parser.exit(_report_prepare(mismatches, dest))


if __name__ == "__main__":
    main()
