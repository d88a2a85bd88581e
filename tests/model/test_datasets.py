"""footfall-data: the labelling and split rules against the published data, and the whole
download -> prepare -> load_split path on a miniature fake snapshot."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from footfall.files import file_sha256
from footfall.labels import EMOTIONS, GENDERS, RACES
from footfall_training import data
from footfall_training import datasets as ds

from ..support import missing_requirement

# The two malformed UTKFace names and the member names they became (../shared/data/README.md).
RENAMED = {
    "24_0_1_20170116220224657.jpg.chip.jpg": "24_0_1_20170116220224657 .jpg.chip.jpg",
    "55_0_0_20170116232725357.jpg.chip.jpg": "55_0_0_20170116232725357jpg.chip.jpg",
}
NO_RACE = {"39_1_20170116174525125.jpg.chip.jpg", "61_1_20170109142408075.jpg.chip.jpg",
           "61_1_20170109150557335.jpg.chip.jpg"}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def original_name(member: str) -> str:
    base = member.removeprefix("utkface/")
    return RENAMED.get(base, base)


@pytest.fixture(scope="module")
def utk_rows(shared_data) -> list[dict[str, str]]:
    return read_rows(shared_data / "utkface_128.csv")


@pytest.fixture(scope="module")
def vote_rows(shared_data) -> list[dict[str, str]]:
    return read_rows(shared_data / "ferplus_votes.csv")


@pytest.fixture(scope="module")
def utk_stats(shared_data) -> dict:
    path = shared_data / "tools" / "utkface_stats.json"
    if not path.exists():
        missing_requirement(f"{path} not found (the dHash duplicate groups of the UTKFace build)")
    return json.loads(path.read_text())


# ---- the rules against the published files -----------------------------------------------------

def test_name_parser_reproduces_every_utkface_label(utk_rows, utk_stats):
    assert {v: k for k, v in RENAMED.items()} == utk_stats["renamed"]
    assert len(utk_rows) == 23_707
    for row in utk_rows:
        labels = ds.parse_utkface_name(original_name(row["file"]))
        assert f"utkface/{labels.name}" == row["file"]
        assert (f"{float(labels.age):.1f}", labels.gender, labels.race or "") == \
            (row["age"], row["gender"], row["race"]), row["file"]
    assert {r["file"].removeprefix("utkface/") for r in utk_rows if not r["race"]} == NO_RACE
    with pytest.raises(ValueError):
        ds.parse_utkface_name("24_2_0_20170116220224657.jpg.chip.jpg")  # gender code 2
    with pytest.raises(ValueError):
        ds.parse_utkface_name("24_0_0_20170116220224657.jpg")


def test_split_rule_reproduces_utkface_splits(utk_rows, utk_stats):
    groups = utk_stats["dhash_duplicate_groups"]
    assert len(groups) == 577 and sum(map(len, groups)) == 1_194
    grouped = {name: f"group{i}" for i, group in enumerate(groups) for name in group}
    actual = {original_name(r["file"]): r["split"] for r in utk_rows}
    alone = [n for n in actual if n not in grouped]
    assert len(alone) == 23_707 - 1_194
    assert [n for n in alone if ds.utkface_split(n) != actual[n]] == []
    # Duplicates follow their group's first name; without the grouping some would differ.
    assert ds.assign_splits({n: grouped.get(n, n) for n in actual}) == actual
    assert any(ds.utkface_split(n) != actual[n] for n in grouped)


def test_utkface_manifest_rebuilds_byte_identical(utk_rows, utk_stats, tmp_path):
    grouped = {name: f"group{i}" for i, group in enumerate(utk_stats["dhash_duplicate_groups"]) for name in group}
    originals = sorted(original_name(r["file"]) for r in utk_rows)  # the build's order
    splits = ds.assign_splits({n: grouped.get(n, n) for n in originals})
    ds.write_csv(tmp_path / "utk.csv", ds.MANIFEST_COLUMNS,
                 (ds.utkface_manifest_row(ds.parse_utkface_name(n), splits[n]) for n in originals))
    assert file_sha256(tmp_path / "utk.csv") == data.SHA256["utkface_128.csv"]


def test_majority_rule_reproduces_every_ferplus_label(shared_data, vote_rows):
    assert len(vote_rows) == 35_710
    for row in vote_rows:
        majority = ds.ferplus_majority([int(row[f"votes_{n}"]) for n in ds.VOTE_NAMES])
        assert (majority.emotion or "", majority.status, str(int(majority.included))) == \
            (row["ferplus_majority"], row["status"], row["included"]), row["fer_name"]
    expected = {f"ferplus/{r['fer_name']}.jpg": (r["ferplus_majority"], r["split"])
                for r in vote_rows if r["included"] == "1"}
    manifest = read_rows(shared_data / "ferplus_48.csv")
    assert {r["file"]: (r["emotion"], r["split"]) for r in manifest} == expected
    assert len(manifest) == 31_222


def test_ferplus_csvs_rebuild_byte_identical(vote_rows, tmp_path):
    folder_order = {split: i for i, (_, split, _) in enumerate(ds.FER_FOLDERS)}
    assert vote_rows == sorted(vote_rows, key=lambda r: (folder_order[r["split"]], r["fer_name"]))
    manifest, votes = [], []
    for r in vote_rows:
        usage = next(u for _, split, u in ds.FER_FOLDERS if split == r["split"])
        row, votes_row = ds.ferplus_rows(r["fer_name"], usage, r["split"],
                                         [int(r[f"votes_{n}"]) for n in ds.VOTE_NAMES], r["fer2013_label"])
        manifest += [row] if row else []
        votes.append(votes_row)
    ds.write_csv(tmp_path / "m.csv", ds.MANIFEST_COLUMNS, manifest)
    ds.write_csv(tmp_path / "v.csv", ds.VOTES_COLUMNS, votes)
    assert file_sha256(tmp_path / "m.csv") == data.SHA256["ferplus_48.csv"]
    assert file_sha256(tmp_path / "v.csv") == data.SHA256["ferplus_votes.csv"]


def test_vote_shares_are_the_training_targets(shared_data, vote_rows):
    loaded = data._read_votes(shared_data)
    included = [r for r in vote_rows if r["included"] == "1"]
    assert len(loaded) == len(included)
    for r in included:
        shares, original = loaded[r["fer_name"]]
        assert original == (EMOTIONS.index(r["fer2013_label"]) if r["fer2013_label"] else -1)
        raw = {n: int(r[f"votes_{n}"]) for n in data.VOTE_NAMES}
        assert abs(shares.sum() - 1.0) < 1e-6 and shares[EMOTIONS.index("happy")] * sum(
            raw[n] for n in data.FERPLUS_TO_EMOTION) == pytest.approx(raw["happiness"], rel=1e-5)
        assert EMOTIONS[int(np.argmax(shares))] == r["ferplus_majority"]  # the majority is the top share


def test_tar_writer_reproduces_the_published_archive(shared_data, tmp_path):
    with tarfile.open(shared_data / "ferplus_48.tar") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    assert [name for name, _ in members] == [r["file"] for r in read_rows(shared_data / "ferplus_48.csv")]
    ds.write_tar(tmp_path / "f.tar", members)
    assert file_sha256(tmp_path / "f.tar") == data.SHA256["ferplus_48.tar"]


def test_verify_accepts_the_published_data(shared_data, capsys):
    with pytest.raises(SystemExit) as done:
        ds.main(["verify", "--dir", str(shared_data)])
    assert done.value.code == 0, capsys.readouterr().err


# ---- a miniature snapshot, end to end -----------------------------------------------------------

def smooth_image(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """Random but smooth, so that JPEG keeps it close and every image has its own dHash."""
    shape = (5, 5, channels) if channels > 1 else (5, 5)
    return cv2.resize(rng.integers(0, 256, shape, dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)


def stamp_with_other_split(prefix: str, other: str) -> str:
    """A UTKFace name starting with ``prefix`` whose own split differs from that of ``other``."""
    for i in range(1000):
        name = f"{prefix}_20170101{i:09d}.jpg.chip.jpg"
        if ds.utkface_split(name) != ds.utkface_split(other):
            return name
    raise AssertionError("no such name")


UTK_FAKES = [  # original name, (age, gender, race)
    ("30_0_0_20170101000000001.jpg.chip.jpg", (30, "male", "white")),
    ("45_1_2_20170101000000002.jpg.chip.jpg", (45, "female", "asian")),
    ("8_0_3_20170101000000003.jpg.chip.jpg", (8, "male", "indian")),
    ("70_1_4_20170101000000004.jpg.chip.jpg", (70, "female", "others")),
    ("61_1_20170109142408075.jpg.chip.jpg", (61, "female", None)),
    ("24_0_1_20170116220224657 .jpg.chip.jpg", (24, "male", "black")),
    ("55_0_0_20170116232725357jpg.chip.jpg", (55, "male", "white")),
]
DUPLICATE = "10_0_4_20170101000000010.jpg.chip.jpg"  # and a pixel twin labelled 13 (see fake_sources)
FER_FAKES = {  # folder: (stem, votes, FER+ label or None, original label placed in FaceExp folders)
    "data/FER2013Train": [("fer0000003", [0, 0, 0, 0, 1, 0, 9, 0, 0, 0], "fear", ["fear"]),
                          ("fer0000001", [6, 0, 1, 1, 0, 0, 0, 0, 2, 0], "neutral", ["angry"]),
                          ("fer0000002", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0], None, ["sad", "happy"])],
    "data/FER2013Valid": [("fer0000010", [0, 8, 1, 0, 0, 0, 0, 0, 1, 0], "happy", ["happy"]),
                          ("fer0000011", [0, 0, 0, 0, 0, 0, 0, 7, 3, 0], None, ["neutral"])],
    "data/FER2013Test": [("fer0000021", [1, 0, 0, 0, 0, 9, 0, 0, 0, 0], "disgust", []),
                         ("fer0000020", [0, 0, 0, 0, 10, 0, 0, 0, 0, 0], "angry", ["angry"])],
}
# Twins with different labels are ambiguous, no twin at all is unmatched: both stay empty.
FER_ORIGINAL = {"fer0000001": "angry", "fer0000002": "", "fer0000003": "fear", "fer0000010": "happy",
                "fer0000011": "neutral", "fer0000020": "angry", "fer0000021": ""}


@pytest.fixture(scope="module")
def fake_sources(tmp_path_factory):
    """Extracted snapshot folders (<repo>-<commit>/) with a handful of images; yields
    (sources, UTKFace truth: original name -> (age, gender, race, BGR mean))."""
    rng = np.random.default_rng(0)
    sources = tmp_path_factory.mktemp("sources")
    roots = {key: sources / snap.folder_name for key, snap in ds.SNAPSHOTS.items()}
    for root in roots.values():
        root.mkdir()
        (root / "README.md").write_text("not data\n")

    utk = roots["utkface"] / ds.UTK_FOLDER
    utk.mkdir(parents=True)
    truth = {}
    for name, labels in UTK_FAKES:
        image = smooth_image(rng, 200, 3)
        cv2.imwrite(str(utk / name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        truth[name] = (*labels, image.reshape(-1, 3).mean(0))
    twin = stamp_with_other_split("13_0_4", DUPLICATE)
    image = smooth_image(rng, 200, 3)
    for name, age in ((DUPLICATE, 10), (twin, 13)):
        cv2.imwrite(str(utk / name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        truth[name] = (age, "male", "others", image.reshape(-1, 3).mean(0))
    cv2.imwrite(str(utk / "not_a_face_name.jpg"), image)  # skipped: the name carries no labels
    (utk / "notes.txt").write_text("ignored\n")

    fer, faceexp = roots["ferplus"], roots["fer2013"] / "data"
    for label in ds.FACEEXP_LABELS:  # every label folder exists in the snapshot
        (faceexp / label).mkdir(parents=True)
        cv2.imwrite(str(faceexp / label / "9000.jpg"), cv2.resize(smooth_image(rng, 48, 1), (224, 224)))
    count = 0
    for folder, rows in FER_FAKES.items():
        (fer / folder).mkdir(parents=True)
        with open(fer / folder / "label.csv", "w", newline="") as fh:
            for stem, votes, _, originals in rows:
                csv.writer(fh).writerow([f"{stem}.png", "(0, 0, 48, 48)", *votes])
                image = smooth_image(rng, 48, 1)
                cv2.imwrite(str(fer / folder / f"{stem}.png"), image)
                big = cv2.resize(image, (224, 224), interpolation=cv2.INTER_CUBIC)
                for label in originals:
                    count += 1
                    cv2.imwrite(str(faceexp / label / f"{count}.jpg"), big)
    return sources, truth


def test_prepare_builds_what_load_split_reads(fake_sources, tmp_path, monkeypatch):
    sources, truth = fake_sources
    dest = tmp_path / "data"
    mismatches = ds.prepare(sources, dest)
    # Fake images cannot match the published files: every output is reported, with both digests.
    assert len(mismatches) == 5
    for line, (name, digest) in zip(mismatches, data.SHA256.items()):
        assert line == f"{name}: expected sha256 {digest}, got {file_sha256(dest / name)}"
    assert ds.prepare(sources, dest, check=False) == []
    assert sorted(p.name for p in dest.iterdir()) == sorted(data.SHA256)  # no scratch or .part left

    utk = read_rows(dest / "utkface_128.csv")
    assert [r["file"] for r in utk] == [f"utkface/{ds.parse_utkface_name(n).name}" for n in sorted(truth)]
    split_of = {original_name(r["file"]): r["split"] for r in utk}
    twins = [n for n in truth if truth[n][0] in (10, 13)]
    assert split_of[twins[0]] == split_of[twins[1]] == ds.utkface_split(min(twins))
    assert all(split_of[n] == ds.utkface_split(n) for n in truth if n not in twins)
    votes = {r["fer_name"]: r for r in read_rows(dest / "ferplus_votes.csv")}
    expected_votes = {stem: (label or "", str(int(label is not None)), FER_ORIGINAL[stem])
                      for rows in FER_FAKES.values() for stem, _, label, _ in rows}
    assert {k: (r["ferplus_majority"], r["included"], r["fer2013_label"]) for k, r in votes.items()} == \
        expected_votes
    assert list(votes) == sorted(votes)  # label.csv rows were written unsorted

    for name in data.SHA256:  # the published digests replaced by these files' own
        monkeypatch.setitem(data.SHA256, name, file_sha256(dest / name))
    assert data.sha256_mismatches(dest, data.SHA256) == []
    for split in ("train", "val", "test"):
        faces = data.load_split(split, data_dir=dest, cache_dir=tmp_path / "cache", size=64)
        utk_names = sorted(n for n in truth if split_of[n] == split)
        utk_index = np.flatnonzero(faces.dataset == 0)
        assert len(utk_index) == len(utk_names)
        for i, name in zip(utk_index, utk_names):
            age, gender, race, bgr_mean = truth[name]
            assert (faces.age[i], GENDERS[faces.gender[i]], RACES[faces.race[i]] if faces.race[i] >= 0 else None) \
                == (age, gender, race)
            np.testing.assert_allclose(faces.images[i].reshape(-1, 3).mean(0), bgr_mean[::-1], atol=3)
        fer_index = np.flatnonzero(faces.dataset == 1)
        folder = next(f for f, s, _ in ds.FER_FOLDERS if s == split)
        kept = sorted((stem, label) for stem, _, label, _ in FER_FAKES[folder] if label)
        assert [EMOTIONS[faces.emotion[i]] for i in fer_index] == [label for _, label in kept]
        assert np.all(faces.age[fer_index] != faces.age[fer_index])  # NaN: FER has no age
        assert np.all(faces.images[fer_index, ..., 0] == faces.images[fer_index, ..., 2])  # grey


def test_prepare_command_reports_the_mismatch(fake_sources, tmp_path, capsys):
    sources, _ = fake_sources
    with pytest.raises(SystemExit) as done:
        ds.main(["prepare", "--sources", str(sources), "--dest", str(tmp_path)])
    err = capsys.readouterr().err
    assert done.value.code == 1
    assert f"utkface_128.tar: expected sha256 {data.SHA256['utkface_128.tar']}, got " in err
    assert err.count("sha256 mismatch") == 5 and (tmp_path / "utkface_128.tar").exists()
    with pytest.raises(SystemExit) as done:
        ds.main(["verify", "--dir", str(tmp_path)])
    assert done.value.code == 1 and capsys.readouterr().err.count("sha256 mismatch") == 5
    with pytest.raises(SystemExit) as done:
        ds.main(["prepare", "--sources", str(tmp_path / "nothing"), "--dest", str(tmp_path / "out")])
    assert done.value.code == 2 and "AgeProgression" in capsys.readouterr().err


def test_download_fetches_codeload_tarballs_then_prepares(fake_sources, tmp_path, monkeypatch, capsys):
    sources, _ = fake_sources
    server = tmp_path / "codeload"
    for snap in ds.SNAPSHOTS.values():  # served as https://codeload.github.com/OWNER/REPO/tar.gz/COMMIT
        target = server / snap.owner / snap.repo / "tar.gz" / snap.commit
        target.parent.mkdir(parents=True)
        with tarfile.open(target, "w:gz") as tar:
            tar.add(sources / snap.folder_name, arcname=snap.folder_name)
    monkeypatch.setattr(ds, "CODELOAD", server.as_uri())
    dest = tmp_path / "data"
    with pytest.raises(SystemExit) as done:
        ds.main(["download", "--dest", str(dest)])
    assert done.value.code == 1 and "sha256 mismatch" in capsys.readouterr().err
    assert sorted(p.name for p in (dest / "sources").iterdir()) == \
        sorted(s.archive_name for s in ds.SNAPSHOTS.values())  # no .part left
    # From the tarballs, the same files as from the extracted folders.
    extracted = tmp_path / "extracted"
    ds.prepare(sources, extracted, check=False)
    assert {n: file_sha256(dest / n) for n in data.SHA256} == {n: file_sha256(extracted / n) for n in data.SHA256}
    # Tarballs already there are not fetched again.
    monkeypatch.setattr(ds, "CODELOAD", (tmp_path / "gone").as_uri())
    assert ds.download(dest / "sources") == [dest / "sources" / s.archive_name for s in ds.SNAPSHOTS.values()]
    with pytest.raises(OSError):
        ds.fetch((tmp_path / "gone" / "x").as_uri(), tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()
