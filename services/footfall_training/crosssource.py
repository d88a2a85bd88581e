"""Faces from other sources: a cross-source validation set built from public snapshots.

Neither UTKFace nor FER2013: 12,749 news photos of Labeled Faces in the Wild (LFW; 350x350
grayscale as the repository holds them) and 923 other photos (film stills of 8 Indian actors,
4 stock photos; nearly all in colour), labelled with one of eight expressions by students for the
``muxspace/facial_expressions`` repository, and gender labels of the LFW photos from the
manually verified lists of Afifi & Abdelhamed (AFIF4, 2017; ``male_names.txt`` /
``female_names.txt``, here from ``keyork/cpd-2020-summer``). There are no ages.

``footfall-data crosssource`` builds ``crosssource_faces.tar`` (the original JPEG bytes,
unchanged, so the build does not depend on the OpenCV build) and ``crosssource_faces.csv``
(labels, identity, split) in ``<FOOTFALL_CACHE_DIR>/crosssource/`` and checks them against
their published sha256::

    footfall-data crosssource --sources /work/.mirror          # git mirrors (owner+repo/repo)
    footfall-data crosssource --sources ~/snapshots            # codeload tarballs or folders
    footfall-data crosssource --download                       # needs internet: fetches both

The set is optional and built locally (it is not in ../shared/data): tests that need it skip
when it is absent, even under CI.

Rules (plain functions):

>>> legend_emotion("HAPPINESS"), legend_emotion("anger"), legend_emotion("contempt")
('happy', 'angry', None)
>>> identity_of("George_W_Bush_0012.jpg"), identity_of("HrithikRoshan_102.jpg")
('George_W_Bush', 'HrithikRoshan')
>>> crosssource_split("George_W_Bush")
'test'
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import subprocess
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from footfall.files import file_sha256
from footfall.labels import EMOTIONS, GENDERS
from footfall_training.data import sha256_mismatches
from footfall_training.datasets import Snapshot, download, locate_snapshot, write_csv, write_tar

log = logging.getLogger(__name__)

LEGEND = "data/legend.csv"
IMAGES = "images"
GENDER_LISTS = {"male": "label/male_names.txt", "female": "label/female_names.txt"}

CROSSSOURCE_SNAPSHOTS = {
    # Apache-2.0 (the repository); the photos are LFW's (news photos, no licence stated) and film stills.
    "facial_expressions": Snapshot("muxspace", "facial_expressions", "5fb9c13afac07c55eae8d25eb6b50af344ad60c9",
                                   (IMAGES, "data")),
    # MIT (the repository); the lists are Afifi & Abdelhamed's LFW gender labels (no licence stated).
    "lfw_gender": Snapshot("keyork", "cpd-2020-summer", "a9664cd61f616e65b1fae5c027c23097c598ef93", ("label",)),
}
# sha256 of the label files read from the snapshots (the images are checked through the tar's).
SOURCE_SHA256 = {
    LEGEND: "a4be0fc5afa10e44fdc717bf2fe5b3e2c916c07335aec254111c74b40ec75eb0",
    GENDER_LISTS["male"]: "2abf7a487ff94869a125cb03c71431139fb64f5aac5cb33f061bb95516f92db3",
    GENDER_LISTS["female"]: "4e70a3d901e2ebe6a93b2e706376020c4d50e4ea972868061fd79fd1076b0465",
}
TAR = "crosssource_faces.tar"
CSV = "crosssource_faces.csv"
SHA256 = {TAR: "a0147766823250d14a7596fe27ed86707a6206e8614256316c0a806d6befeb3e",
          CSV: "d98ffd7841c2d791986387a94ed94f3c243a297aca31c5c09b7b69919660754e"}
COLUMNS = ("file", "identity", "source", "gender", "emotion", "split", "annotator")
SPLIT_SALT = "crosssource-v1"
# The student annotators' expression names, lower-cased, and ours; contempt is not one of ours.
LEGEND_TO_EMOTION = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happiness": "happy",
                     "neutral": "neutral", "sadness": "sad", "surprise": "surprise"}
_NUMBERED = re.compile(r"(?P<identity>.+?)_(?P<number>\d+)k?\.jpg")
_LFW_NUMBER = re.compile(r"\d{4}")


def legend_emotion(label: str) -> str | None:
    """Our emotion for an annotator's label (any case), None for one we do not predict."""
    return LEGEND_TO_EMOTION.get(label.strip().lower())


def identity_of(name: str) -> str:
    """The person an image shows: its file name without the trailing picture number
    (LFW ``First_Last_0001.jpg``, film stills ``ActorName_12.jpg``)."""
    match = _NUMBERED.fullmatch(name)
    if not match:
        raise ValueError(f"no identity in file name {name!r}")
    return match["identity"]


def source_of(name: str) -> str:
    """``lfw`` for LFW's four-digit numbering, ``other`` (film stills, stock photos) else.

    >>> source_of("Tony_Blair_0144.jpg"), source_of("KatrinaKaif_6.jpg")
    ('lfw', 'other')
    """
    match = _NUMBERED.fullmatch(name)
    return "lfw" if match and _LFW_NUMBER.fullmatch(match["number"]) else "other"


def crosssource_split(identity: str) -> str:
    """``val`` or ``test``, half the identities each (sha256 of salt and identity): a person's
    photos never sit in both, so selecting on val and reporting test stay apart."""
    return "val" if int(hashlib.sha256(f"{SPLIT_SALT}:{identity}".encode()).hexdigest()[:8], 16) % 2 == 0 \
        else "test"


def read_legend(text: str) -> dict[str, tuple[str, str]]:
    """image name -> (emotion, annotator) from legend.csv; contempt rows and images labelled
    twice with different emotions are left out.

    >>> read_legend("User.id,image,emotion\\n1,a_0001.jpg,ANGER\\n2,a_0001.jpg,anger\\n"
    ...             "1,b_0001.jpg,happiness\\n2,b_0001.jpg,neutral\\n1,c_1.jpg,contempt\\n")
    {'a_0001.jpg': ('angry', '1')}
    """
    labels: dict[str, set[str]] = {}
    annotators: dict[str, str] = {}
    for annotator, image, label in list(csv.reader(io.StringIO(text)))[1:]:  # header: (u|U)ser.id,image,emotion
        emotion = legend_emotion(label)
        if emotion is None:
            continue
        labels.setdefault(image.strip(), set()).add(emotion)
        annotators.setdefault(image.strip(), annotator.strip())
    conflicts = sorted(n for n, e in labels.items() if len(e) > 1)
    if conflicts:
        log.warning("left out %d images labelled with two emotions: %s", len(conflicts), ", ".join(conflicts))
    return {n: (e.pop(), annotators[n]) for n, e in labels.items() if len(e) == 1}


def read_gender_lists(male: str, female: str) -> dict[str, str]:
    """image name -> gender from the two lists (one name a line); names on both are left out."""
    males, females = set(male.split()), set(female.split())
    both = males & females
    if both:
        log.warning("left out %d images on both gender lists: %s", len(both), ", ".join(sorted(both)))
    return {**{n: "male" for n in males - both}, **{n: "female" for n in females - both}}


def manifest_rows(legend: dict[str, tuple[str, str]], genders: dict[str, str],
                  images: set[str]) -> list[list[str]]:
    """Manifest rows (COLUMNS) of the labelled images present in the snapshot, sorted by name."""
    rows = []
    for name in sorted(legend):
        if name not in images:
            log.warning("skipping %s: in legend.csv but not in %s/", name, IMAGES)
            continue
        emotion, annotator = legend[name]
        identity = identity_of(name)
        rows.append([f"crosssource/{name}", identity, source_of(name), genders.get(name, ""), emotion,
                     crosssource_split(identity), annotator])
    return rows


# ---- snapshots: codeload tarballs, extracted folders, or git mirrors -----------------------------

def _git_mirror(snapshot: Snapshot, sources: Path) -> Path | None:
    """A bare git directory of the repository in ``sources`` (``owner+repo/repo``, ``repo.git``), if any."""
    for candidate in (sources / f"{snapshot.owner}+{snapshot.repo}" / "repo", sources / f"{snapshot.repo}.git"):
        if (candidate / "HEAD").is_file() and (candidate / "objects").is_dir():
            return candidate
    return None


def snapshot_root(snapshot: Snapshot, sources: Path, scratch: Path) -> Path:
    """The snapshot's files under a folder: as ``locate_snapshot`` finds them, or extracted at the
    pinned commit from a git mirror in ``sources`` (``git archive``)."""
    mirror = _git_mirror(snapshot, Path(sources))
    if mirror is None:
        return locate_snapshot(snapshot, Path(sources), scratch)
    root = scratch / snapshot.repo
    root.mkdir(parents=True, exist_ok=True)
    log.info("extracting %s from %s at %s", ", ".join(snapshot.folders), mirror, snapshot.commit[:12])
    archive = subprocess.run(["git", f"--git-dir={mirror}", "archive", "--format=tar", snapshot.commit,
                              *snapshot.folders], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return root


# ---- building ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildResult:
    rows: int
    mismatches: list[str]


def build_crosssource(expressions_root: Path, gender_root: Path, dest: Path, check: bool = True) -> BuildResult:
    """crosssource_faces.tar / .csv in ``dest`` from the two snapshot folders; with ``check``,
    the sha256 of the label files read and of the files made are compared with the pinned ones."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    sources = {LEGEND: expressions_root / LEGEND, **{p: gender_root / p for p in GENDER_LISTS.values()}}
    mismatches = [f"{key}: expected sha256 {SOURCE_SHA256[key]}, got {file_sha256(path)}"
                  for key, path in sources.items() if check and file_sha256(path) != SOURCE_SHA256[key]]
    legend = read_legend(sources[LEGEND].read_text(encoding="utf-8-sig"))
    genders = read_gender_lists(*(sources[GENDER_LISTS[g]].read_text() for g in ("male", "female")))
    image_dir = expressions_root / IMAGES
    rows = manifest_rows(legend, genders, {p.name for p in image_dir.iterdir() if p.is_file()})
    write_tar(dest / TAR, ((row[0], (image_dir / row[0].removeprefix("crosssource/")).read_bytes()) for row in rows))
    write_csv(dest / CSV, COLUMNS, rows)
    counts = Counter((r[5], r[4]) for r in rows)
    log.info("cross-source set: %d images, %d identities; %s", len(rows), len({r[1] for r in rows}),
             ", ".join(f"{s} {e} {n}" for (s, e), n in sorted(counts.items())))
    if check:
        mismatches += sha256_mismatches(dest, SHA256)
    return BuildResult(len(rows), mismatches)


def prepare_crosssource(sources: Path, dest: Path, check: bool = True) -> BuildResult:
    """Build the set in ``dest`` from the two snapshots found in ``sources``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".footfall-crosssource-", dir=dest) as scratch:
        roots = {key: snapshot_root(snap, Path(sources), Path(scratch)) for key, snap in CROSSSOURCE_SNAPSHOTS.items()}
        return build_crosssource(roots["facial_expressions"], roots["lfw_gender"], dest, check)


def download_crosssource(sources: Path, base: str | None = None) -> list[Path]:
    """Fetch the two codeload tarballs at their pinned commits into ``sources``."""
    return download(sources, base, CROSSSOURCE_SNAPSHOTS)


def default_dir() -> Path:
    from footfall.config import ModelSettings

    return Path(ModelSettings().cache_dir) / "crosssource"


# ---- loading -------------------------------------------------------------------------------------

class CrossSourceMissing(FileNotFoundError):
    """The cross-source set has not been built here."""


@dataclass
class CrossSourceSet:
    """Labels of the cross-source images and their encoded bytes (decoded as needed)."""

    names: list[str]
    jpegs: list[bytes]
    identity: np.ndarray  # (N,) str
    source: np.ndarray  # (N,) str: lfw / other
    gender: np.ndarray  # (N,) int8 index into GENDERS / -1
    emotion: np.ndarray  # (N,) int8 index into EMOTIONS / -1
    split: np.ndarray  # (N,) str: val / test

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: np.ndarray) -> CrossSourceSet:
        return CrossSourceSet(names=[self.names[i] for i in index], jpegs=[self.jpegs[i] for i in index],
                              **{f.name: getattr(self, f.name)[index] for f in fields(self)
                                 if f.name not in ("names", "jpegs")})


def load_crosssource(folder: Path | None = None, check: bool = True) -> CrossSourceSet:
    """The built set from ``folder`` (default ``<cache_dir>/crosssource``); CrossSourceMissing when absent."""
    folder = Path(folder or default_dir())
    if not all((folder / name).is_file() for name in SHA256):
        raise CrossSourceMissing(f"cross-source set not found in {folder}: build it with `footfall-data crosssource "
                                 f"--sources DIR` (or --download); see model/README.md, Faces from other sources")
    if check:
        problems = sha256_mismatches(folder, SHA256)
        if problems:
            raise CrossSourceMissing(f"files in {folder} do not match their published sha256: {'; '.join(problems)}")
    with open(folder / CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    blobs: dict[str, bytes] = {}
    with tarfile.open(folder / TAR) as tar:
        for member in tar:
            blobs[member.name] = tar.extractfile(member).read()
    index = lambda values, key: np.array([values.index(r[key]) if r[key] else -1 for r in rows], np.int8)  # noqa: E731
    return CrossSourceSet(names=[r["file"] for r in rows], jpegs=[blobs[r["file"]] for r in rows],
                          identity=np.array([r["identity"] for r in rows]), source=np.array([r["source"] for r in rows]),
                          gender=index(GENDERS, "gender"), emotion=index(EMOTIONS, "emotion"),
                          split=np.array([r["split"] for r in rows]))


# ---- command line (a subcommand of footfall-data) -------------------------------------------------

COMMAND = "crosssource"


def add_command(commands) -> None:
    """Register ``footfall-data crosssource`` on footfall-data's subparsers."""
    build = commands.add_parser(COMMAND, help="build the cross-source validation set (faces from other sources)")
    build.add_argument("--sources", type=Path, help="folder with the two snapshots: codeload tarballs, extracted "
                                                     "folders or git mirrors (owner+repo/repo); default: DEST/sources")
    build.add_argument("--dest", type=Path, help="where the set goes (default: FOOTFALL_CACHE_DIR/crosssource)")
    build.add_argument("--download", action="store_true", help="fetch the snapshots from GitHub first (internet)")


def run_command(args) -> int:
    """Build (after ``--download``, fetch first); 0 when the files match their pinned sha256."""
    import sys

    dest = Path(args.dest or default_dir())
    sources = Path(args.sources or dest / "sources")
    try:
        if args.download:
            download_crosssource(sources)
        result = prepare_crosssource(sources, dest)
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"footfall-data crosssource: {exc}", file=sys.stderr)
        return 2
    for line in result.mismatches:
        print(f"footfall-data crosssource: sha256 mismatch: {line}", file=sys.stderr)
    if result.mismatches:
        print(f"footfall-data crosssource: the files were left in {dest}; changed snapshots hold other content",
              file=sys.stderr)
        return 1
    print(f"footfall-data crosssource: {result.rows} faces in {dest / TAR} and {dest / CSV}, sha256 as published")
    return 0
