"""Pipeline crops: dataset faces cropped by the ingest worker's own detection and alignment."""

from __future__ import annotations

import numpy as np

from footfall_training import pipeline_crops as pc
from footfall_training.data import FaceSet


def test_padding_frames_the_face_in_black():
    source = pc.source_image(np.full((48, 48, 3), (200, 100, 50), np.uint8))
    assert source.shape == (128, 128, 3) and tuple(source[0, 0]) == (50, 100, 200)  # upscaled, BGR
    framed, pad = pc.pad_for_detection(source)
    assert framed.shape == (256, 256, 3) and pad == 64
    assert framed[:64].max() == 0 and framed[-64:].max() == 0 and framed[:, :64].max() == 0
    assert np.array_equal(framed[64:192, 64:192], source)


def test_crop_is_warped_from_the_unpadded_image(yunet_detector, test_subset):
    """Corners the aligned crop takes from outside the image repeat its edge, not the black frame
    (warped from the framed image, 17 of these 24 crops had a black corner)."""
    black_corners = 0
    for face in test_subset.images[test_subset.dataset == 0][:24]:
        crop, score = pc.pipeline_crop(face, yunet_detector)
        assert crop is not None and score >= 0.75
        corners = np.stack([crop[:3, :3], crop[:3, -3:], crop[-3:, :3], crop[-3:, -3:]]).reshape(4, -1)
        black_corners += int(corners.max(axis=1).min() == 0)
    assert black_corners <= 3


def test_no_face_keeps_the_dataset_crop(yunet_detector):
    blank = np.full((2, 128, 128, 3), 90, np.uint8)
    fallback = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    assert pc.pipeline_crop(blank[0], yunet_detector) == (None, 0.0)
    crops = pc.crop_faces(blank, fallback, yunet_detector)
    assert not crops.detected.any() and np.all(crops.score == 0)
    assert np.array_equal(crops.faces.images, fallback)


def test_real_faces_are_found_and_aligned_like_the_dataset_crops(yunet_detector, test_subset):
    utk = np.flatnonzero(test_subset.dataset == 0)[:24]
    fer = np.flatnonzero(test_subset.dataset == 1)[:24]
    for rows, min_rate in ((utk, 0.95), (fer, 0.8)):
        images = test_subset.images[rows]
        crops = pc.crop_faces(images, images, yunet_detector)
        assert crops.detected.mean() >= min_rate, crops.detected.mean()
        assert crops.faces.images.shape == (len(rows), 112, 112, 3)
        found = np.flatnonzero(crops.detected)
        got = crops.faces.images[found].astype(np.float32)
        own = images[found].astype(np.float32)
        # The template was fitted to the dataset framing: a crop looks like its own dataset crop
        # far more than like another face's.
        same = np.abs(got - own).mean(axis=(1, 2, 3))
        other = np.abs(got - np.roll(own, 1, axis=0)).mean(axis=(1, 2, 3))
        assert np.median(same) < 0.6 * np.median(other), (np.median(same), np.median(other))


def test_detection_rate_per_dataset():
    n = 6
    faces = FaceSet(images=np.zeros((n, 112, 112, 3), np.uint8), age=np.zeros(n, np.float32),
                    gender=np.zeros(n, np.int8), race=np.zeros(n, np.int8), emotion=np.zeros(n, np.int8),
                    emotion_votes=np.zeros((n, 7), np.float32), dataset=np.array([0, 0, 0, 1, 1, 1], np.int8))
    crops = pc.PipelineCrops(faces, np.array([1, 1, 0, 1, 0, 0], bool), np.zeros(n, np.float32))
    assert crops.detection_rate() == {"utkface": 2 / 3, "ferplus": 1 / 3}
    assert crops.subset(np.array([0, 3])).detection_rate() == {"utkface": 1.0, "ferplus": 1.0}


def test_split_is_prepared_once_then_read_from_the_cache(tmp_path, monkeypatch):
    n = 3
    faces = FaceSet(images=np.full((n, 112, 112, 3), 7, np.uint8), age=np.array([1, 2, np.nan], np.float32),
                    gender=np.array([0, 1, -1], np.int8), race=np.array([0, 1, -1], np.int8),
                    emotion=np.array([-1, -1, 3], np.int8), emotion_votes=np.zeros((n, 7), np.float32),
                    dataset=np.array([0, 0, 1], np.int8))
    calls = []

    def fake_prepare(split, data_dir=None, detector=None):
        calls.append(split)
        return pc.PipelineCrops(faces, np.array([True, False, True]), np.array([0.9, 0, 0.8], np.float32))

    monkeypatch.setattr(pc, "prepare_split", fake_prepare)
    monkeypatch.setattr(pc, "make_detector", lambda score_threshold=None: None)
    first = pc.load_pipeline_split("test", cache_dir=tmp_path, score_threshold=0.75)
    second = pc.load_pipeline_split("test", cache_dir=tmp_path, score_threshold=0.75)
    assert calls == ["test"]
    assert np.array_equal(second.detected, first.detected) and np.array_equal(second.faces.gender, faces.gender)
    assert np.isnan(second.faces.age[2])
    # Another threshold is another cache entry.
    pc.load_pipeline_split("test", cache_dir=tmp_path, score_threshold=0.5)
    assert calls == ["test", "test"]
