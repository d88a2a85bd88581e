"""The rknn backend's own logic on x86, through the ``NpuRuntime`` adapter with a fake runtime.

The fake answers like a batch-1 RKNN model: per sample, outputs shaped (1,), (1,), (1, 5),
(1, 7) as RKNNLite returns them, computed from the sample's pixels, so that every result can
be traced back to its input row. What runs on the real NPU is checked in the simulator
(test_rknn_simulator.py).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from footfall.inference.backends import BackendUnavailable, load_backend
from footfall.model_file import ModelMetadata
from footfall.inference.backends.onnxruntime import OnnxRuntimeBackend
from footfall.inference.backends.base import split_batch
from footfall.inference.backends.rknn import RknnBackend, parse_cores
from footfall.labels import EMOTIONS, RACES

SIZE = 112
META = ModelMetadata(name="footfall-mnv2-test", version="t", input_size=SIZE, channel_order="RGB",
                     mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5), races=RACES, emotions=EMOTIONS,
                     precision="int8")


def raw_outputs(batch: np.ndarray) -> list[np.ndarray]:
    """A stand-in model, batch first: age = mean pixel, gender = pixel/255, race/emotion peaked at pixel % k."""
    value = batch.reshape(len(batch), -1).mean(1).astype(np.float32)
    race = np.full((len(batch), 5), 0.05, np.float32)
    race[np.arange(len(batch)), value.astype(int) % 5] = 0.8
    emotion = np.full((len(batch), 7), 0.05, np.float32)
    emotion[np.arange(len(batch)), value.astype(int) % 7] = 0.7
    return [value, value / 255.0, race, emotion]


class FakeRuntime:
    """Records what the backend does with one context; ``fail_on`` makes infer return None like RKNNLite."""

    def __init__(self, log: list, fail_on: int | None = None, barrier: threading.Barrier | None = None,
                 init_result: Exception | None = None) -> None:
        self.log, self.fail_on, self.barrier, self.init_result = log, fail_on, barrier, init_result
        self.samples: list[np.ndarray] = []
        self.threads: set[str] = set()
        self.released = False
        log.append(self)

    def load(self, model_path: Path) -> None:
        self.model_path = model_path

    def init(self, core_mask: int) -> None:
        if self.init_result is not None:
            raise self.init_result
        self.core_mask = core_mask

    def infer(self, sample: np.ndarray) -> list[np.ndarray] | None:
        if self.barrier is not None and not self.samples:
            self.barrier.wait(timeout=5)  # every context must be running at the same time to pass
        self.samples.append(sample)
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and self.fail_on == int(sample.reshape(-1)[0]):
            return None
        return [o[0:1] for o in raw_outputs(sample)]

    def release(self) -> None:
        self.released = True


@pytest.fixture()
def rknn_file(tmp_path) -> Path:
    path = tmp_path / "model.rknn"
    path.write_bytes(b"RKNN fake")
    Path(str(path) + ".json").write_text(META.to_json())
    return path


def make_backend(rknn_file, runtimes: list, **kwargs) -> RknnBackend:
    factory_kwargs = {k: kwargs.pop(k) for k in ("fail_on", "barrier") if k in kwargs}
    return RknnBackend(rknn_file, runtime_factory=lambda: FakeRuntime(runtimes, **factory_kwargs), **kwargs)


def numbered_batch(n: int) -> np.ndarray:
    """Sample i is filled with the value i, so outputs say which sample they came from."""
    return np.repeat(np.arange(n, dtype=np.uint8), SIZE * SIZE * 3).reshape(n, SIZE, SIZE, 3)


def test_one_context_per_core_with_the_core_masks(rknn_file):
    runtimes: list[FakeRuntime] = []
    with make_backend(rknn_file, runtimes, npu_cores="0,1,2"):
        assert [r.core_mask for r in runtimes] == [1, 2, 4]
        assert all(r.model_path == rknn_file for r in runtimes)
    runtimes.clear()
    with make_backend(rknn_file, runtimes, npu_cores="2,0", contexts_per_core=2) as backend:
        assert [r.core_mask for r in runtimes] == [4, 1, 4, 1]
        assert backend.cores == [2, 0, 2, 0]
    runtimes.clear()
    with make_backend(rknn_file, runtimes, npu_cores=[1]):
        assert [r.core_mask for r in runtimes] == [2]


@pytest.mark.parametrize("n", [1, 2, 3, 10, 32])
def test_batch_split_across_contexts_and_results_in_input_order(rknn_file, n):
    runtimes: list[FakeRuntime] = []
    batch = numbered_batch(n)
    with make_backend(rknn_file, runtimes) as backend:
        p = backend.predict(batch)
    expected = raw_outputs(batch)
    np.testing.assert_array_equal(p.age, expected[0])
    np.testing.assert_array_equal(p.emotion, expected[3])
    # contiguous chunks, first contexts take the remainder, no context left idle when there is work
    seen = [[int(s.reshape(-1)[0]) for s in r.samples] for r in runtimes]
    assert [i for chunk in seen for i in chunk] == list(range(n))
    sizes = [len(chunk) for chunk in seen]
    assert sizes == [len(r) for r in split_batch(n, 3)] + [0] * (3 - min(n, 3))
    assert max(sizes) - min(s for s in sizes if s) <= 1


def test_contexts_run_in_parallel_threads(rknn_file):
    runtimes: list[FakeRuntime] = []
    barrier = threading.Barrier(3)
    with make_backend(rknn_file, runtimes, barrier=barrier) as backend:
        p = backend.predict(numbered_batch(9))  # deadlocks (BrokenBarrierError) if contexts ran one by one
    assert p.age.tolist() == list(range(9))
    assert len({name for r in runtimes for name in r.threads}) == 3


def test_samples_reach_the_npu_as_uint8_nhwc_views_without_copies(rknn_file):
    runtimes: list[FakeRuntime] = []
    batch = numbered_batch(6)
    with make_backend(rknn_file, runtimes) as backend:
        backend.predict(batch)
        for r in runtimes:
            for s in r.samples:
                assert s.dtype == np.uint8 and s.shape == (1, SIZE, SIZE, 3) and s.flags.c_contiguous
                assert np.shares_memory(s, batch)  # no float conversion, no copy on the board's CPU
        # a non-contiguous batch is made contiguous once, and still comes back in order
        strided = numbered_batch(12)[::2]
        assert backend.predict(strided).age.tolist() == list(range(0, 12, 2))


def test_postprocessing_equals_the_onnx_path(rknn_file):
    """Same metadata and the same raw model outputs give identical Predictions on both backends."""
    batch = numbered_batch(7)

    class FakeSession:
        def run(self, names, feeds):
            assert names == list(META.outputs)
            x = feeds["input"]  # the ONNX path normalizes on the CPU: NCHW float
            assert x.shape == (7, 3, SIZE, SIZE) and x.dtype == np.float32
            np.testing.assert_allclose(x[:, 0, 0, 0], (np.arange(7) - 127.5) / 127.5, rtol=1e-6)
            return raw_outputs(batch)

    onnx_backend = OnnxRuntimeBackend.__new__(OnnxRuntimeBackend)
    onnx_backend.sessions, onnx_backend.metadata, onnx_backend.input_name = [FakeSession()], META, "input"
    with make_backend(rknn_file, []) as npu_backend:
        assert npu_backend.metadata == onnx_backend.metadata
        a, b = onnx_backend.predict(batch), npu_backend.predict(batch)
    for key in ("age", "gender", "race", "emotion"):
        got, want = getattr(b, key), getattr(a, key)
        assert got.shape == want.shape and got.dtype == want.dtype, key
        np.testing.assert_array_equal(got, want, err_msg=key)


def test_outputs_with_rknn_4d_shapes_are_flattened(rknn_file):
    """Builds with remove_reshape return e.g. (1, 7, 1, 1); the backend must not care."""

    class Runtime4D(FakeRuntime):
        def infer(self, sample):
            return [o.reshape(1, -1, 1, 1) for o in super().infer(sample)]

    with RknnBackend(rknn_file, runtime_factory=lambda: Runtime4D([])) as backend:
        p = backend.predict(numbered_batch(4))
    assert p.race.shape == (4, 5) and p.emotion.shape == (4, 7) and p.age.shape == (4,)
    assert p.age.tolist() == [0, 1, 2, 3]


def test_empty_batch_and_bad_input(rknn_file):
    with make_backend(rknn_file, []) as backend:
        p = backend.predict(np.zeros((0, SIZE, SIZE, 3), np.uint8))
        assert len(p) == 0 and p.race.shape == (0, 5) and p.emotion.shape == (0, 7)
        with pytest.raises(ValueError, match="uint8"):
            backend.predict(np.zeros((2, SIZE, SIZE, 3), np.float32))
        with pytest.raises(ValueError, match="112"):
            backend.predict(np.zeros((2, 64, 64, 3), np.uint8))


def test_inference_returning_none_names_the_core(rknn_file):
    runtimes: list[FakeRuntime] = []
    with make_backend(rknn_file, runtimes, fail_on=4) as backend:  # sample 4 lands on context 1 (rows 3..5)
        with pytest.raises(RuntimeError, match=r"NPU core 1 \(context 1, sample 4\)"):
            backend.predict(numbered_batch(9))
        assert backend.predict(numbered_batch(3)).age.tolist() == [0, 1, 2]  # the backend keeps working


@pytest.mark.parametrize("cores", ["0,3", "", "a,b", "-1", [0, 5]])
def test_bad_core_lists_are_refused(rknn_file, cores):
    with pytest.raises(ValueError, match="cores 0, 1, 2"):
        make_backend(rknn_file, [], npu_cores=cores)


def test_duplicate_core_and_bad_context_count(rknn_file):
    with pytest.raises(ValueError, match="twice"):
        parse_cores("1,1")
    with pytest.raises(ValueError, match="contexts_per_core"):
        make_backend(rknn_file, [], contexts_per_core=0)


def test_missing_rknnlite_gives_one_clear_error(rknn_file, monkeypatch):
    # As on x86 (or a board image without the wheel): the import fails.
    monkeypatch.setitem(sys.modules, "rknnlite", None)
    monkeypatch.setitem(sys.modules, "rknnlite.api", None)
    with pytest.raises(BackendUnavailable) as err:
        load_backend("rknn", rknn_file, npu_cores="0,1,2")
    message = str(err.value)
    for needed in ("rknn-toolkit-lite2", "librknnrt.so", "/dev/rknpu", "FOOTFALL_BACKEND=onnxruntime"):
        assert needed in message


def test_a_failing_init_releases_the_contexts_already_made(rknn_file):
    runtimes: list[FakeRuntime] = []
    calls = iter([None, None, BackendUnavailable("init_runtime failed on core 2")])
    with pytest.raises(BackendUnavailable, match="core 2"):
        RknnBackend(rknn_file, runtime_factory=lambda: FakeRuntime(runtimes, init_result=next(calls)))
    assert len(runtimes) == 3 and all(r.released for r in runtimes)


def test_close_releases_every_context(rknn_file):
    runtimes: list[FakeRuntime] = []
    backend = make_backend(rknn_file, runtimes, contexts_per_core=2)
    backend.close()
    assert len(runtimes) == 6 and all(r.released for r in runtimes)
    with pytest.raises(RuntimeError, match="closed"):
        backend.predict(numbered_batch(1))


def test_metadata_comes_from_the_sidecar(tmp_path):
    path = tmp_path / "model.rknn"
    path.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"model\.rknn\.json"):
        RknnBackend(path, runtime_factory=lambda: FakeRuntime([]))
    with pytest.raises(FileNotFoundError, match="not found"):
        RknnBackend(tmp_path / "absent.rknn", runtime_factory=lambda: FakeRuntime([]))


def test_concurrent_predict_calls_each_get_their_own_rows(rknn_file):
    """The gRPC server may call predict from several threads: contexts are locked, rows never mix."""
    with make_backend(rknn_file, []) as backend:
        results: dict[int, list] = {}

        def call(offset: int) -> None:
            batch = numbered_batch(offset + 8)[offset:]
            results[offset] = backend.predict(batch).age.tolist()

        threads = [threading.Thread(target=call, args=(k,)) for k in (0, 10, 20, 30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
    assert results == {k: list(range(k, k + 8)) for k in (0, 10, 20, 30)}


class FakeRKNNLite:
    """Stands in for rknnlite.api.RKNNLite (aarch64 only) to check the real adapter's calls."""

    instances: list = []
    load_ret = 0
    init_ret = 0

    def __init__(self, verbose=False):
        self.calls = []
        FakeRKNNLite.instances.append(self)

    def load_rknn(self, path):
        self.calls.append(("load_rknn", path))
        return self.load_ret

    def init_runtime(self, core_mask=0):
        self.calls.append(("init_runtime", core_mask))
        return self.init_ret

    def inference(self, inputs, data_format=None):
        self.calls.append(("inference", inputs[0].shape, inputs[0].dtype, data_format))
        return [o[0:1] for o in raw_outputs(inputs[0])]

    def release(self):
        self.calls.append(("release",))


@pytest.fixture()
def fake_rknnlite(monkeypatch):
    import types

    module = types.ModuleType("rknnlite.api")
    module.RKNNLite = FakeRKNNLite
    package = types.ModuleType("rknnlite")
    package.api = module
    monkeypatch.setitem(sys.modules, "rknnlite", package)
    monkeypatch.setitem(sys.modules, "rknnlite.api", module)
    FakeRKNNLite.instances = []
    monkeypatch.setattr(FakeRKNNLite, "load_ret", 0)
    monkeypatch.setattr(FakeRKNNLite, "init_ret", 0)
    return FakeRKNNLite


def test_rknnlite_adapter_calls(rknn_file, fake_rknnlite):
    with load_backend("rknn", rknn_file, npu_cores="0,1,2") as backend:
        assert backend.predict(numbered_batch(3)).age.tolist() == [0, 1, 2]
    for core, lite in enumerate(fake_rknnlite.instances):
        assert lite.calls[0] == ("load_rknn", str(rknn_file))
        assert lite.calls[1] == ("init_runtime", 1 << core)
        assert lite.calls[2] == ("inference", (1, SIZE, SIZE, 3), np.uint8, ["nhwc"])
        assert lite.calls[-1] == ("release",)


def test_rknnlite_adapter_errors(rknn_file, fake_rknnlite, monkeypatch):
    monkeypatch.setattr(fake_rknnlite, "init_ret", -1)
    with pytest.raises(BackendUnavailable, match=r"init_runtime\(core_mask=1\) failed.*librknnrt\.so.*/dev/rknpu"):
        load_backend("rknn", rknn_file)
    assert fake_rknnlite.instances[0].calls[-1] == ("release",)
    monkeypatch.setattr(fake_rknnlite, "load_ret", -1)
    with pytest.raises(RuntimeError, match="could not load"):
        load_backend("rknn", rknn_file)
