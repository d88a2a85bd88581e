"""ONNX export: dynamic batch, named outputs, metadata in the file, same numbers as PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from footfall.inference.backends import load_backend
from footfall.inference.backends.base import normalize_nchw, prepare_crops
from footfall.labels import EMOTIONS, RACES
from footfall.model_file import METADATA_KEY, ModelMetadata
from footfall_training.network import ExportWrapper
from footfall_training.preprocess import INPUT_SIZE, MEAN, STD

from ..support import import_file
from .model_files import REPO


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_outputs_are_named_after_the_heads_with_a_dynamic_batch(random_model):
    _, _, onnx_path = random_model
    sess = session(onnx_path)
    assert [o.name for o in sess.get_outputs()] == list(ExportWrapper.OUTPUT_NAMES) == ["age", "gender", "race",
                                                                                         "emotion"]
    assert sess.get_inputs()[0].shape[1:] == [3, INPUT_SIZE, INPUT_SIZE]
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # symbolic batch axis
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
        age, gender, race, emotion = sess.run(None, {"input": x})
        assert age.shape == (batch,) and gender.shape == (batch,)
        assert race.shape == (batch, len(RACES)) and emotion.shape == (batch, len(EMOTIONS))
        np.testing.assert_allclose(emotion.sum(1), 1.0, atol=1e-5)


def test_metadata_round_trips_into_model_metadata(random_model):
    net, _, onnx_path = random_model
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    meta = ModelMetadata.from_json(props[METADATA_KEY])
    assert meta == ModelMetadata.from_json(meta.to_json())
    assert meta.name == net.config.name == "footfall-mnv2-w025" and meta.version == "test"
    assert meta.input_size == INPUT_SIZE and meta.channel_order == "RGB"
    assert meta.mean == MEAN and meta.std == STD
    assert meta.races == RACES and meta.emotions == EMOTIONS
    assert meta.outputs == ExportWrapper.OUTPUT_NAMES and meta.precision == "fp32"
    # What the serving backend reads is the same metadata.
    assert load_backend("onnxruntime", onnx_path, threads=1).metadata == meta


def test_onnx_matches_pytorch(random_model):
    net, _, onnx_path = random_model
    faces = np.random.default_rng(0).integers(0, 256, (5, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    meta = load_backend("onnxruntime", onnx_path, threads=1).metadata
    x = normalize_nchw(faces, meta)
    onnx_out = session(onnx_path).run(None, {"input": x})
    with torch.no_grad():
        torch_out = ExportWrapper(net.eval())(torch.from_numpy(x))
    for name, a, b in zip(ExportWrapper.OUTPUT_NAMES, onnx_out, torch_out):
        # Probabilities to 1e-4; age is in years (an expectation over 101 bins), so the same
        # float32 rounding shows up about 100 times larger there: 1e-4 of its 0-100 range.
        np.testing.assert_allclose(a, b.numpy(), atol=1e-2 if name == "age" else 1e-4, err_msg=name)
    # The outputs vary with the face, so the comparison above means something.
    assert np.ptp(onnx_out[0]) > 1.0 and np.ptp(onnx_out[1]) > 0.1


def test_weights_recovered_from_onnx_give_the_same_outputs(random_model):
    """scripts/onnx_to_checkpoint.py: BatchNorms folded by the export are unfolded again."""
    tool = import_file(REPO / "scripts" / "onnx_to_checkpoint.py")
    net, _, onnx_path = random_model
    faces = np.random.default_rng(1).integers(0, 256, (64, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    recovered = tool.net_from_onnx(onnx_path, faces)
    assert recovered.config.width == net.config.width == 0.25
    x = torch.from_numpy(normalize_nchw(faces[:8], load_backend("onnxruntime", onnx_path, threads=1).metadata))
    with torch.no_grad():
        want, got = net.eval()(x), recovered(x)
        for key in ("gender", "race", "emotion"):
            torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=0)
        torch.testing.assert_close(got["age"], want["age"], atol=0.05, rtol=0)
        # Train mode normalises with the batch's statistics; on the faces the statistics came from
        # they are the unfolded running ones, so (dropout aside) the output stays the same.
        everything = torch.from_numpy(normalize_nchw(faces, load_backend("onnxruntime", onnx_path, threads=1).metadata))
        reference = recovered(everything)
        recovered.train()
        recovered.dropout.eval()
        train_mode = recovered(everything)
    torch.testing.assert_close(train_mode["emotion"], reference["emotion"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", [{}, {"arch": "mnv3", "attention": "mha", "shared_depth": 4}, {"output_stride": 16}])
def test_a_net_that_learned_at_56_px_exports_at_56_px_and_serves_112_px_crops(random_model, tmp_path, arch,
                                                                               monkeypatch):
    """A 56 px model's graph takes 56 px faces (GDC folded to the 2x2 final map, at output stride 16 the
    4x4 map needs no fold; no resize inside);
    the worker's backend shrinks the ingest's 112 px crops to it; the files are named for their size."""
    from footfall_training.export import export_onnx, main, quantize_int8
    from footfall_training.network import FaceNet
    from footfall_training.train import resize_batch

    from .conftest import with_varied_outputs

    torch.manual_seed(1)
    net = with_varied_outputs(FaceNet(width=0.25, **arch)).eval()
    net.image_size = 56
    path = export_onnx(net, tmp_path / "low.onnx", version="test")
    model = onnx.load(str(path))
    meta = ModelMetadata.from_onnx(model)
    assert meta.input_size == 56 and meta.name == net.config.name + "-56px"
    assert session(path).get_inputs()[0].shape[1:] == [3, 56, 56]
    ops = {node.op_type for node in model.graph.node}
    assert "Resize" not in ops  # (mnv3's squeeze-excite pools globally: GlobalAveragePool is its own)
    # The backend's 112 -> 56 shrink (cv2 INTER_AREA) is the 2x2 mean that training uses (resize_batch),
    # to uint8 rounding.
    faces = np.random.default_rng(0).integers(0, 256, (6, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    small = prepare_crops(list(faces), 56)
    trained = resize_batch(torch.from_numpy(faces).permute(0, 3, 1, 2).float(), 56)
    assert np.abs(small.transpose(0, 3, 1, 2) - trained.numpy()).max() <= 0.5
    backend = load_backend("onnxruntime", path, threads=1)
    got = backend.predict_faces(faces)
    with torch.no_grad():
        want = net((torch.from_numpy(small).permute(0, 3, 1, 2).float() - 127.5) / 127.5)
    np.testing.assert_allclose(got.emotion, want["emotion"].numpy(), atol=2e-3)
    np.testing.assert_allclose(got.age, want["age"].numpy(), atol=0.05)
    # INT8 calibrates on 112 px training faces, shrunk as served.
    int8 = quantize_int8(path, tmp_path / "low.int8.onnx", faces)
    assert load_backend("onnxruntime", int8, threads=1).predict_faces(faces).emotion.shape == (6, len(EMOTIONS))
    # footfall-export names the files after the size.
    monkeypatch.setattr("footfall_training.export.calibration_faces", lambda count: faces)
    _, pt, _ = random_model
    low = tmp_path / "low.pt"
    torch.save({**torch.load(pt, weights_only=False), "config": {"width": 0.25, "image_size": 56}}, low)
    main([str(low), "--out", str(tmp_path / "out"), "--version", "test", "--calibration", "8"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "footfall_w025_56px.int8.onnx", "footfall_w025_56px.onnx", "footfall_w025_56px.pt"]


def test_the_benchmarks_four_single_task_networks_export_as_one_graph(tmp_path):
    """benchmarks/multitask_vs_single.py times this graph; it goes through the same exporter."""
    bench = import_file(REPO / "benchmarks" / "multitask_vs_single.py")
    backend = load_backend("onnxruntime", bench.export_four_single(0.25, tmp_path / "four.onnx", int8=False),
                           threads=1)
    faces = np.random.default_rng(0).integers(0, 256, (3, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    p = backend.predict(faces)
    assert p.age.shape == (3,) and p.race.shape == (3, len(RACES)) and p.emotion.shape == (3, len(EMOTIONS))


def test_int8_layouts_fuse_into_integer_kernels_and_keep_the_float_nodes_asked_for(random_model, tmp_path):
    """The shipped export (default Int8Layout) runs every convolution and head as an integer kernel
    in ONNX Runtime; ``float_nodes`` leaves the stem and the heads in float (benchmarks/int8_layout.py)."""
    from footfall_training.export import Int8Layout, float_node_names, quantize_int8

    _, _, onnx_path = random_model
    fp32 = onnx.load(str(onnx_path))
    convs = [n for n in fp32.graph.node if n.op_type == "Conv"]
    assert float_node_names(fp32, ("stem",)) == [convs[0].name]
    assert len(float_node_names(fp32, ("heads",))) == 4
    assert len(float_node_names(fp32, ("depthwise",))) == 17  # one per inverted-residual block
    faces = np.random.default_rng(0).integers(0, 256, (32, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)

    def optimized_ops(layout: Int8Layout) -> list[str]:
        int8_path = quantize_int8(onnx_path, tmp_path / "random.int8.onnx", faces, layout)
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(str(int8_path), opts, providers=["CPUExecutionProvider"])
        backend = load_backend("onnxruntime", int8_path, threads=1)
        assert backend.metadata.precision == "int8" and np.isfinite(backend.predict(faces[:4]).age).all()
        return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]

    shipped = optimized_ops(Int8Layout())
    assert shipped.count("QLinearConv") == len(convs) and "Conv" not in shipped
    assert shipped.count("QGemm") == 4 and shipped.count("QuantizeLinear") == 1  # Q/DQ pairs all fused
    float_ends = optimized_ops(Int8Layout(float_nodes=("stem", "heads")))
    assert float_ends.count("QLinearConv") == len(convs) - 1 and float_ends.count("Conv") == 1
    assert float_ends.count("Gemm") == 4 and "QGemm" not in float_ends
    # (How close INT8 stays to FP32 is checked on the committed model, whose weights are trained:
    # tests/model/test_committed_model.py; a random net's activations quantize arbitrarily.)


def test_an_emotion_bias_reaches_the_onnx_int8_and_pt_files_identically(random_model, tmp_path):
    """``footfall-export --emotion-bias``: the bias is inside every file made, and the metadata says so."""
    from footfall_training.export import main
    from footfall_training.train import load_checkpoint

    net, pt, plain_onnx = random_model
    bias = {e: 0.3 * i - 0.9 for i, e in enumerate(EMOTIONS)}
    bias_file = tmp_path / "bias.json"
    bias_file.write_text(json.dumps({"tau": 0.5, "emotion_bias": bias}))
    out = tmp_path / "out"
    main([str(pt), "--out", str(out), "--version", "biased", "--emotion-bias", str(bias_file), "--calibration", "32"])
    want_bias = torch.tensor([bias[e] for e in EMOTIONS])
    faces = np.random.default_rng(2).integers(0, 256, (6, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    fp32, int8 = out / "footfall_w025.onnx", out / "footfall_w025.int8.onnx"
    meta = ModelMetadata.from_onnx_file(fp32)
    assert meta.emotion_bias == pytest.approx(want_bias.tolist()) and ModelMetadata.from_onnx_file(int8).emotion_bias
    x = normalize_nchw(faces, meta)
    with torch.no_grad():
        logits = net.eval()(torch.from_numpy(x))["emotion_logits"]
        want = torch.softmax(logits + want_bias, 1).numpy()
    np.testing.assert_allclose(load_backend("onnxruntime", fp32, threads=1).predict(faces).emotion, want, atol=1e-4)
    shipped = load_checkpoint(out / "footfall_w025.pt")
    torch.testing.assert_close(shipped.emotion_bias, want_bias)
    with torch.no_grad():
        np.testing.assert_allclose(shipped(torch.from_numpy(x))["emotion"].numpy(), want, atol=1e-5)
    # The bias moved the predictions (so the comparisons above can fail) ...
    assert (want.argmax(1) != session(plain_onnx).run(["emotion"], {"input": x})[0].argmax(1)).any()
    # ... and the INT8 graph adds it in float after the head, exactly as in FP32: its output is the
    # unbiased INT8 model's (same calibration) shifted by the bias in logit space.
    main([str(pt), "--out", str(tmp_path / "plain"), "--version", "plain", "--calibration", "32"])
    plain = load_backend("onnxruntime", tmp_path / "plain" / "footfall_w025.int8.onnx", threads=1).predict(faces).emotion
    shifted = plain * np.exp(want_bias.numpy())
    np.testing.assert_allclose(load_backend("onnxruntime", int8, threads=1).predict(faces).emotion,
                               shifted / shifted.sum(1, keepdims=True), atol=1e-5)
    assert ModelMetadata.from_onnx_file(tmp_path / "plain" / "footfall_w025.onnx").emotion_bias == ()


def test_checkpoints_saved_before_the_emotion_bias_still_load(random_model, tmp_path):
    from footfall_training.train import load_checkpoint

    net, pt, _ = random_model
    old = torch.load(pt, weights_only=False)
    old["ema"] = {k: v for k, v in old["ema"].items() if k != "emotion_bias"}
    torch.save(old, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert not loaded.emotion_bias.any()
    x = torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["emotion"], net.eval()(x)["emotion"])
    # Metadata written before the field existed reads as "no bias".
    legacy = json.loads(ModelMetadata.from_onnx_file(REPO / "model" / "footfall_w050.onnx").to_json())
    del legacy["emotion_bias"]
    assert ModelMetadata.from_json(json.dumps(legacy)).emotion_bias == ()
    del legacy["flip_confidence"]  # nor a flip threshold: the worker then mirrors every face
    assert ModelMetadata.from_json(json.dumps(legacy)).flip_confidence is None


def test_the_flip_threshold_is_recorded_in_every_file_and_kept_by_a_re_export(random_model, tmp_path):
    """``footfall-export --flip-confidence``: the ONNX FP32 and INT8 metadata and the .pt carry it, a re-export
    of that .pt keeps it, the worker's backend serves it unless told otherwise; out of (0, 1] is refused."""
    from footfall.config import InferenceSettings
    from footfall_training.export import main

    _, pt, _ = random_model
    first, again = tmp_path / "first", tmp_path / "again"
    main([str(pt), "--out", str(first), "--version", "v", "--calibration", "8", "--flip-confidence", "0.7"])
    main([str(first / "footfall_w025.pt"), "--out", str(again), "--version", "v", "--calibration", "8"])
    for out in (first, again):
        assert [ModelMetadata.from_onnx_file(out / name).flip_confidence
                for name in ("footfall_w025.onnx", "footfall_w025.int8.onnx")] == [0.7, 0.7]
    assert torch.load(again / "footfall_w025.pt", weights_only=False)["flip_confidence"] == 0.7
    settings = InferenceSettings(threads=1)
    assert load_backend("onnxruntime", again / "footfall_w025.int8.onnx", settings=settings).name == "onnxruntime+flip<0.7"
    told = InferenceSettings(threads=1, flip_confidence=1)
    assert load_backend("onnxruntime", again / "footfall_w025.int8.onnx", settings=told).name == "onnxruntime+flip"
    # a checkpoint that never had one exports without one: every face mirrored
    main([str(pt), "--out", str(tmp_path / "none"), "--version", "v", "--calibration", "8"])
    assert ModelMetadata.from_onnx_file(tmp_path / "none" / "footfall_w025.onnx").flip_confidence is None
    assert load_backend("onnxruntime", tmp_path / "none" / "footfall_w025.onnx", settings=settings).name == "onnxruntime+flip"
    with pytest.raises(SystemExit):
        main([str(pt), "--out", str(tmp_path / "bad"), "--version", "v", "--flip-confidence", "1.5"])
