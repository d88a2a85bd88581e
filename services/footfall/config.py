"""Every setting of every Footfall service, in one place (12-factor: environment variables).

Each class reads variables with the prefix ``FOOTFALL_``; e.g. ``FOOTFALL_REDIS_URL`` sets
``CommonSettings.redis_url``. The README's "Configuration" table lists them all
(``python -m footfall.config`` prints it from these classes).

Example:
    >>> import os
    >>> os.environ["FOOTFALL_ENABLE_RACE"] = "true"
    >>> CommonSettings().enable_race
    True
    >>> del os.environ["FOOTFALL_ENABLE_RACE"]
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The source checkout (services/footfall/config.py -> repo root); used for defaults only.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "footfall"


def _shared(sub: str, fallback: Path) -> Path:
    """Development machines keep datasets and third-party models in ../shared beside the checkout."""
    candidate = PROJECT_ROOT.parent / "shared" / sub
    return candidate if candidate.exists() else fallback


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FOOTFALL_", extra="ignore", protected_namespaces=())


class CommonSettings(_Base):
    """Settings shared by all services."""

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding the face-crop stream "
                           "(the conventional `REDIS_URL` is read too).",
                           validation_alias=AliasChoices("FOOTFALL_REDIS_URL", "REDIS_URL"))
    stream_prefix: str = Field("footfall", description="Prefix of every Redis key Footfall uses.")
    database_url: str = Field(f"sqlite:///{PROJECT_ROOT / '.footfall' / 'footfall.db'}",
                              description="SQLAlchemy URL of the aggregate database (SQLite or PostgreSQL).")
    enable_race: bool = Field(False, description="Store and show race (off by default: EU AI Act).")
    enable_emotion: bool = Field(True, description="Store and show emotion.")
    log_level: str = Field("INFO", description="Python log level.")
    log_format: str = Field("json", description="`json` (one object per line) or `text`.")
    metrics_port: int = Field(0, description="Port of the /metrics and /healthz endpoint (0: the service's default).")


class IngestSettings(CommonSettings):
    """The ingest worker: cameras in, aligned face crops out to Redis."""

    cameras: str = Field("", description="Comma-separated `camera_id=source`; a source is a file path, an "
                                         "rtsp:// or http(s):// URL, or a webcam index.")
    max_fps: float = Field(5.0, description="Frames processed per second per camera (others are skipped).")
    detect_width: int = Field(640, description="Frames are scaled to this width for face detection.")
    detection_threshold: float = Field(0.75, description="YuNet score threshold.")
    min_face_px: int = Field(24, description="Faces smaller than this (shorter box side, pixels) are ignored.")
    track_max_age_s: float = Field(1.5, description="A track not matched for this long is closed.")
    track_iou: float = Field(0.3, description="IoU needed to continue a track.")
    scene_cut_threshold: float = Field(0.35, description="Colour-histogram (Bhattacharyya) distance between processed "
                                       "frames taken as a cut or a moved camera: all tracks close (0: off).")
    track_sample_interval_s: float = Field(0.4, description="At most one crop per track per this many seconds.")
    max_crops_per_track: int = Field(20, description="Crops published per track at most (enough to fold a visitor).")
    stream_maxlen: int = Field(5000, description="Approximate cap of the crop stream (Redis memory stays flat).")
    jpeg_quality: int = Field(90, description="JPEG quality of the published crops.")
    models_dir: Path = Field(_shared("models", CACHE_DIR / "models"),
                             description="Third-party model files (YuNet); downloaded here when missing.")
    reconnect_initial_s: float = Field(0.5, description="First reconnect delay of a lost stream.")
    reconnect_max_s: float = Field(30.0, description="Longest reconnect delay.")
    loop: bool = Field(False, description="Restart file sources at their end instead of finishing (demo).")
    realtime: bool = Field(True, description="Read file sources at their native frame rate.")


class InferenceSettings(CommonSettings):
    """The inference worker: a gRPC server around one backend."""

    grpc_port: int = Field(50051, description="gRPC listening port.")
    grpc_host: str = Field("0.0.0.0", description="gRPC listening address.")
    backend: str = Field("onnxruntime", description="`onnxruntime` (CPU) or `rknn` (RK3588 NPU).")
    face_model: Path = Field(PROJECT_ROOT / "model" / "footfall_w050.int8.onnx",
                             description="Model file (.onnx for onnxruntime, .rknn for rknn).")
    threads: int = Field(2, description="CPU threads of the ONNX Runtime backend.")
    # On by default: with it the shipped model meets every accuracy target (model/README.md).
    flip_average: bool = Field(True, description="Average each face's predictions with its mirror image's: "
                               "more accurate, twice the compute per face (model/README.md measures both).")
    max_batch: int = Field(32, ge=1, description="Largest batch the micro-batcher forms.")
    max_wait_ms: float = Field(4.0, description="How long the micro-batcher waits to fill a batch.")
    max_request_faces: int = Field(256, ge=1, description="Most crops accepted in one request.")
    max_message_mb: int = Field(16, description="Largest gRPC message.")
    max_connection_age_s: int = Field(300, description="Clients are asked to reconnect after this long, so "
                                      "they re-resolve DNS and spread over newly added workers.")
    npu_cores: str = Field("0,1,2", description="RK3588 NPU cores used by the rknn backend.")
    npu_contexts_per_core: int = Field(1, description="RKNNLite contexts per NPU core (each fed from its own thread).")


class AggregatorSettings(CommonSettings):
    """The aggregator: stream -> inference -> per-visitor folding -> database."""

    inference_targets: str = Field("127.0.0.1:50051", description="Comma-separated host:port of inference "
                                   "workers, or one `dns:///name:port` resolving to several (round robin).")
    consumer_group: str = Field("aggregator", description="Redis consumer group.")
    consumer_name: str = Field(socket.gethostname(), description="This consumer's name in the group.")
    read_count: int = Field(64, description="Most entries read per XREADGROUP.")
    block_ms: int = Field(500, description="XREADGROUP block time.")
    claim_idle_ms: int = Field(15000, description="Entries pending longer than this are claimed from dead consumers.")
    inference_deadline_s: float = Field(5.0, description="Deadline of one inference call.")
    inference_retries: int = Field(3, description="Attempts per inference call.")
    visit_timeout_s: float = Field(4.0, description="A visitor is final when its track was not seen this long "
                                                    "(stream time).")
    bucket_s: int = Field(60, description="Width of the stored time buckets, seconds.")
    min_track_faces: int = Field(2, ge=1, description="Tracks with fewer crops are counted as noise, not visitors.")


class DashboardSettings(CommonSettings):
    """The analysts' dashboard."""

    k_anonymity: int = Field(5, ge=2, description="Cells built from fewer visitors are suppressed.")
    auth_username: str = Field("", description="Login name; the dashboard asks for a login when set.")
    auth_password_hash: str = Field("", description="scrypt hash of the password (`footfall-dashboard-hash`).")
    session_secret: str = Field("", description="Key that signs login sessions (kept across reloads and tabs); "
                                "unset: random per dashboard process, so a restart signs everyone out.")
    session_hours: float = Field(12.0, gt=0, description="A login stays valid this long (reloads, new tabs).")
    refresh_s: int = Field(30, description="Live-mode refresh interval.")
    sites: str = Field("", description="Optional camera grouping: `site/zone=cam1,cam2;site2=cam3`.")
    timezone: str = Field("UTC", description="IANA time zone the dashboard shows times in (stored times are UTC).")
    opening_hours: str = Field("", description="Opening hours `HH:MM-HH:MM` (local time) every day; hours outside "
                               "are left out of the averages (median per hour, heatmap). Empty: always open.")
    dashboard_port: int = Field(8501, description="HTTP port of `footfall-dashboard`.")
    dashboard_address: str = Field("0.0.0.0", description="Listening address of `footfall-dashboard`.")
    dashboard_app: str = Field("", description="Path of the Streamlit app (default: dashboard/app.py in the "
                                               "source tree; set in container images).")


class ModelSettings(_Base):
    """Training, evaluation and export of the face model."""

    data_dir: Path = Field(_shared("data", CACHE_DIR / "data"), description="UTKFace / FER+ archives.")
    cache_dir: Path = Field(CACHE_DIR, description="Decoded datasets and training checkpoints.")
    rknn_venv: Path = Field(CACHE_DIR / "rknn-venv", description="Virtual environment of rknn-toolkit2 (RKNN "
                            "conversion and simulator), made by scripts/setup_rknn_venv.sh.")


ALL_SETTINGS = (CommonSettings, IngestSettings, InferenceSettings, AggregatorSettings, DashboardSettings,
                ModelSettings)


def settings_table() -> str:
    """Markdown table of every environment variable (for the README)."""
    seen: set[str] = set()
    lines = ["| variable | default | used by | meaning |", "|---|---|---|---|"]
    for cls in ALL_SETTINGS:
        for name, field in cls.model_fields.items():
            if name in seen:
                continue
            seen.add(name)
            default = str(field.default)
            default = default.replace(str(PROJECT_ROOT.parent / "shared"), "../shared").replace(
                str(PROJECT_ROOT) + "/", "").replace(str(Path.home()), "~")
            if name == "consumer_name":
                default = "(hostname)"
            user = "all" if cls is CommonSettings else cls.__name__.removesuffix("Settings").lower()
            lines.append(f"| `FOOTFALL_{name.upper()}` | `{default}` | {user} | {field.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_table())
