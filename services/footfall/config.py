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

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The source checkout (services/footfall/config.py -> repo root); used for defaults only.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "footfall"  # ~/.cache/footfall
# Fixed defaults, the same on every machine: the development checkouts' ../shared folder is passed
# explicitly (FOOTFALL_DATA_DIR / FOOTFALL_MODELS_DIR, set by footfall.sh when ../shared exists).


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FOOTFALL_", extra="ignore", protected_namespaces=())


class CommonSettings(_Base):
    """Settings shared by all services."""

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding the face-crop stream "
                           "(the conventional `REDIS_URL` is read too).",
                           validation_alias=AliasChoices("FOOTFALL_REDIS_URL", "REDIS_URL"))
    stream_prefix: str = Field("footfall", description="Prefix of every Redis key Footfall uses.")
    stream_shards: int = Field(1, ge=1, description="Face streams, split by camera (one aggregator consumes each "
                               "shard at a time; more shards let more aggregators share the work). Ingest and "
                               "aggregators must agree.")
    database_url: str = Field(f"sqlite:///{PROJECT_ROOT / '.footfall' / 'footfall.db'}",
                              description="SQLAlchemy URL of the aggregate database (SQLite or PostgreSQL).")
    enable_race: bool = Field(False, description="Store and show race (off by default: EU AI Act).")
    enable_emotion: bool = Field(True, description="Store and show emotion.")
    log_level: str = Field("INFO", description="Python log level.")
    log_format: str = Field("json", description="`json` (one object per line) or `text`.")
    metrics_port: int = Field(0, description="Port of the /metrics and /healthz endpoint (0: the service's default).")
    max_message_mb: int = Field(16, ge=1, description="Largest gRPC message the inference workers accept and the "
                                "aggregator sends (it splits requests by bytes under it).")


class IngestSettings(CommonSettings):
    """The ingest worker: cameras in, aligned face crops out to Redis."""

    cameras: str = Field("", description="Comma-separated `camera_id=source`; a source is a file path, an "
                                         "rtsp:// or http(s):// URL, or a webcam index.")
    max_fps: float = Field(5.0, description="Frames processed per second per camera (others are skipped).")
    detect_width: int = Field(640, description="Frames are scaled to this width for face detection.")
    detection_threshold: float = Field(0.75, description="YuNet score threshold.")
    min_face_px: int = Field(24, description="Faces smaller than this (shorter box side, pixels) are ignored.")
    track_max_age_s: float = Field(1.5, description="A track not matched for this long is closed.")
    track_confirm_hits: int = Field(2, ge=1, description="Detections that confirm a track; a tentative track "
                                    "publishes nothing (a detector glitch or a mix-up is never counted).")
    track_max_speed: float = Field(15.0, gt=0, description="Fastest plausible walker, face widths per second (a "
                                   "child's face crossing at 630 px/s is ~14): where a new track may be found next.")
    scene_cut_threshold: float = Field(0.35, description="Colour-histogram (Bhattacharyya) distance between processed "
                                       "frames taken as a cut or a moved camera: all tracks close (0: off).")
    count_lines: str = Field("", description="Counting line per camera, `camera=x1,y1,x2,y2;...` (normalized 0..1): "
                             "crossing it from its left to its right, seen walking from (x1,y1) to (x2,y2), is an "
                             "entry, the other way an exit, neither a passer-by (e.g. `door=0.5,1,0.5,0`: left to "
                             "right enters).")
    count_zones: str = Field("", description="Polygon zones, `camera/zone=x1,y1,x2,y2,x3,y3,...;...` (normalized "
                             "0..1): visitors and dwell per zone.")
    track_sample_interval_s: float = Field(0.4, description="At most one crop per track per this many seconds.")
    max_crops_per_track: int = Field(20, description="Crops published per track at most (enough to fold a visitor).")
    stream_maxlen: int = Field(5000, description="Approximate cap of each crop stream (shard): Redis memory stays flat.")
    jpeg_quality: int = Field(90, description="JPEG quality of the published crops.")
    models_dir: Path = Field(CACHE_DIR / "models",
                             description="Third-party model files (YuNet); downloaded here when missing.")
    reconnect_initial_s: float = Field(0.5, description="First reconnect delay of a lost stream.")
    reconnect_max_s: float = Field(30.0, description="Longest reconnect delay.")
    camera_timeout_s: float = Field(10.0, ge=0, description="A network camera must answer within this long: its "
                                    "first reply and a trial open in a child process (both before the worker's "
                                    "OpenCV opens it, so a hanging camera cannot hold the other cameras' opens), "
                                    "FFmpeg's open and each read (0: no checks, OpenCV's defaults).")
    camera_give_up_s: float = Field(0.0, ge=0, description="A live camera that delivered no frame for this long "
                                    "is given up (state `failed`, the others go on); 0: retry for ever. "
                                    "`footfall-local --exit-when-done` uses 60 unless set.")
    loop: bool = Field(False, description="Restart file sources at their end instead of finishing (demo).")
    realtime: bool = Field(True, description="Read file sources at their native frame rate.")


    @field_validator("count_lines")
    @classmethod
    def _valid_lines(cls, value: str) -> str:
        from footfall.counting import parse_count_lines

        parse_count_lines(value)
        return value

    @field_validator("count_zones")
    @classmethod
    def _valid_zones(cls, value: str) -> str:
        from footfall.counting import parse_count_zones

        parse_count_zones(value)
        return value


class GrpcTlsSettings(CommonSettings):
    """TLS between the aggregator (client) and the inference workers (server): footfall/tls.py."""

    grpc_tls_cert: str = Field("", description="PEM certificate: the inference worker's (serves TLS when set "
                               "with the key), or the aggregator's client certificate (mutual TLS).")
    grpc_tls_key: str = Field("", description="PEM private key of `FOOTFALL_GRPC_TLS_CERT`.")
    grpc_tls_ca: str = Field("", description="PEM CA: the aggregator verifies the workers against it (TLS on when "
                             "set); a worker with it requires client certificates it signed (mutual TLS).")


class InferenceSettings(GrpcTlsSettings):
    """The inference worker: a gRPC server around one backend."""

    grpc_port: int = Field(50051, description="gRPC listening port.")
    grpc_host: str = Field("0.0.0.0", description="gRPC listening address.")
    grpc_health_port: int = Field(0, description="Plain-text port serving only grpc.health.v1, for probes that "
                                  "cannot speak TLS (kubelet's gRPC probe); 0: none.")
    backend: str = Field("onnxruntime", description="`onnxruntime` (CPU) or `rknn` (RK3588 NPU).")
    face_model: Path = Field(PROJECT_ROOT / "model" / "footfall_w050.int8.onnx",
                             description="Model file (.onnx for onnxruntime, .rknn for rknn).")
    threads: int = Field(2, description="CPU threads of the ONNX Runtime backend, all its sessions together "
                         "(the worker's CPU limit).")
    session_threads: int = Field(1, ge=1, description="Threads of each ONNX Runtime session: the backend runs "
                                 "`FOOTFALL_THREADS / FOOTFALL_SESSION_THREADS` sessions side by side, each batch "
                                 "split between them (model card, \"Sessions\").")
    # On by default: with it the shipped model meets every accuracy target (model/README.md).
    flip_average: bool = Field(True, description="Average each face's predictions with its mirror image's: "
                               "more accurate, twice the compute per face (model/README.md measures both).")
    # Unset: the model file's own threshold (ModelMetadata.flip_confidence), chosen with the model on
    # its validation split (model card, "Flip averaging"): 0.65 for the shipped one, about a third of the
    # faces get the second pass.
    flip_confidence: float | None = Field(None, gt=0, le=1, description="With flip averaging on, only faces "
                                          "whose top emotion probability is below this get the mirror-image pass; "
                                          "the others keep their single-pass predictions. Unset (or empty): the "
                                          "threshold the model file carries (0.65 for the shipped model; every "
                                          "face for a file without one). 1: every face (twice the compute).")
    max_batch: int = Field(32, ge=1, description="Largest batch the micro-batcher forms.")
    max_wait_ms: float = Field(4.0, description="How long the micro-batcher waits to fill a batch.")
    max_request_faces: int = Field(256, ge=1, description="Most crops accepted in one request.")
    max_concurrent_decodes: int = Field(2, ge=1, description="Crops decoded at once (bounds the worker's memory "
                                        "whatever requests arrive).")
    max_connection_age_s: int = Field(300, description="Clients are asked to reconnect after this long, so "
                                      "they re-resolve DNS and spread over newly added workers.")
    npu_cores: str = Field("0,1,2", description="RK3588 NPU cores used by the rknn backend.")
    npu_contexts_per_core: int = Field(1, description="RKNNLite contexts per NPU core (each fed from its own thread).")

    @field_validator("flip_confidence", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        """``FOOTFALL_FLIP_CONFIDENCE=`` (docker compose's default when the operator sets nothing) means unset.

        >>> InferenceSettings(flip_confidence="").flip_confidence is None, InferenceSettings(flip_confidence="0.5").flip_confidence
        (True, 0.5)
        """
        return None if isinstance(value, str) and not value.strip() else value


class AggregatorSettings(GrpcTlsSettings):
    """The aggregator: stream -> inference -> per-visitor folding -> database."""

    inference_targets: str = Field("127.0.0.1:50051", description="Comma-separated host:port of inference "
                                   "workers, or one `dns:///name:port` resolving to several (round robin).")
    consumer_group: str = Field("aggregator", description="Redis consumer group.")
    consumer_name: str = Field(socket.gethostname(), description="This consumer's name in the group.")
    read_count: int = Field(64, description="Most entries read per XREADGROUP.")
    block_ms: int = Field(500, description="XREADGROUP block time.")
    claim_idle_ms: int = Field(15000, description="Entries pending longer than this are claimed from dead consumers; "
                               "also how long a dead aggregator's shard lease lasts before another takes the shard.")
    inference_deadline_s: float = Field(5.0, description="Deadline of one inference call.")
    inference_retries: int = Field(3, description="Attempts per inference call.")
    inference_eject_s: float = Field(1.0, description="An inference worker that times out or is unavailable leaves "
                                     "the rotation this long, doubling per failed probe (up to 30 s).")
    stall_after_s: float = Field(120.0, description="`/readyz` fails when entries are pending and nothing was "
                                 "acknowledged for this long.")
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

    data_dir: Path = Field(CACHE_DIR / "data", description="UTKFace / FER+ archives, and the sample clip "
                           "`video/short_hamilton_clip.mp4` of the local run.")
    cache_dir: Path = Field(CACHE_DIR, description="Decoded datasets and training checkpoints.")
    rknn_venv: Path = Field(CACHE_DIR / "rknn-venv", description="Virtual environment of rknn-toolkit2 (RKNN "
                            "conversion and simulator), made by scripts/setup_rknn_venv.sh.")


ALL_SETTINGS = (CommonSettings, GrpcTlsSettings, IngestSettings, InferenceSettings, AggregatorSettings,
                DashboardSettings, ModelSettings)


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
            # The same text on every machine: paths relative to the checkout, the cache as its usual place.
            default = default.replace(str(CACHE_DIR), "~/.cache/footfall").replace(str(PROJECT_ROOT) + "/", "").replace(
                str(Path.home()), "~")
            if name == "consumer_name":
                default = "(hostname)"
            elif field.default is None:  # the description says what unset means
                default = "(unset)"
            user = {CommonSettings: "all", GrpcTlsSettings: "inference, aggregator"}.get(
                cls, cls.__name__.removesuffix("Settings").lower())
            lines.append(f"| `FOOTFALL_{name.upper()}` | `{default}` | {user} | {field.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_table())
