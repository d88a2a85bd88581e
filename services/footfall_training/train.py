"""Train the multi-task face model (CPU or CUDA, same code).

Images are decoded once into memory (``footfall_training.data``), augmented as tensor
operations on the training device, and fed to ``FaceNet``. Checkpoints (last and best, with
optimizer and EMA state; the learning rate follows the step count and the augmentation
generator is reseeded per epoch) go to ``<cache_dir>/runs/<run>/``; running the same
command again resumes. Validation every epoch on the EMA weights; early stopping on the
selection score.

    footfall-train --width 0.5 --epochs 35 --run w050
    footfall-train --arch mnv3 --width 0.6 --attention mha --shared-depth 6 --run mnv3-mha-sd6

Loss (``--age-loss``, ``--emotion-target``, ``--weighting``):
- age: ``ldl`` = KL to a Gaussian label distribution over 0..100 plus L1 on its expectation
  (label-distribution learning), or ``huber`` on the expectation (the paper's baseline);
- gender: BCE; race: CE; emotion: CE on FER+ vote shares (``soft``) or the majority (``hard``);
- heads weighted ``fixed`` (paper weights by default) or learned (``uncertainty``, Kendall et al.).
Samples without a label for a head contribute nothing to it.

Levers against what goes wrong on faces from other sources (issue 18; measured at an equal
budget by ``scripts/generalise_study.sh``):
- ``--emotion-loss la``: logit-adjusted loss (Menon et al. 2021), the emotion logits plus
  log(prior of the training labels) inside the loss, so the raw logits learn the balanced rule;
  ``balanced``: each face's emotion loss weighted by its label's class-balanced weight (effective
  number of samples, Cui et al. 2019, beta 0.999);
- ``--sampling balanced``: UTKFace faces drawn with weight 1/sqrt(faces in their age band x gender
  cell) (more infants, teens and women over 60; FER's faces keep their share);
- ``--augment-strong``: more grayscale, tilt and horizontally squeezed (turned) faces;
- ``--select-emotion macro_f1``: checkpoints chosen on the emotion head's macro-F1, not accuracy;
- ``--emotion-original-mix A``: a FER face's soft target is (1 - A) x its FER+ vote shares + A x
  FER2013's original label (the expression the photo was found by).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from footfall_training.augment import AugmentConfig, augment
from footfall_training.data import FaceSet, load_split
from footfall_training.metrics import head_metrics, selection_score
from footfall_training.network import FaceNet, NetConfig, branched_state_dict
from footfall_training.preprocess import INPUT_SIZE, normalize_batch
from footfall.predictions import HEADS, Predictions

log = logging.getLogger("footfall.train")


@dataclass
class TrainConfig:
    run: str = "w050"
    width: float = 0.5
    # The network (footfall_training.network.NetConfig; the defaults build the shipped one): backbone
    # mnv2 | mnv3, attention none | mha over the final map, backbone stages shared by all heads before
    # the face attributes and emotion branch (0: all shared), dropout before the heads.
    arch: str = "mnv2"
    attention: str = "none"
    shared_depth: int = 0
    # 16: the last downsampling block keeps stride 1 (NetConfig.output_stride), for 56 px faces.
    output_stride: int = 32
    # 4: a 6x6 stride-4 stem (NetConfig.stem_stride): 112 px faces at about the 56 px net's cost.
    stem_stride: int = 2
    dropout: float = 0.2
    epochs: int = 35
    batch_size: int = 96
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 500
    age_loss: str = "ldl"  # ldl | huber
    age_sigma: float = 2.0
    emotion_target: str = "soft"  # soft | hard
    weighting: str = "fixed"  # fixed | uncertainty
    # Paper weights for gender and emotion; age and race at 1.0 because our age loss is
    # on another scale than the paper's Huber in years (0.08 was for that).
    w_age: float = 1.0
    w_gender: float = 0.95
    w_race: float = 1.0
    w_emotion: float = 0.85
    ema_decay: float = 0.999
    patience: int = 8
    seed: int = 0
    threads: int = 2
    limit: int = 0  # train on this many samples only (smoke tests)
    # An epoch of at most this many steps (0: one pass over the training set): equal, small budgets
    # for proxy comparisons and short fine-tunes (QAT, pruning), with validation after each.
    max_steps: int = 0
    heads: str = "age,gender,race,emotion"  # single-task models train a subset
    # Which crops to learn from: the datasets' own (dataset), the ingest worker's YuNet + alignment
    # crops of the same images (pipeline, footfall_training.pipeline_crops), or per sample either
    # (mixed, pipeline with probability pipeline_share; validation then on pipeline crops).
    crops: str = "dataset"
    pipeline_share: float = 0.5
    # Start from these weights (a run's best.pt or a committed model/*.pt) with a fresh optimizer
    # and schedule, so training accumulates across machines; ignored when the run resumes.
    init: str = ""
    # Knowledge distillation: a trained (larger) model's outputs as extra soft targets for every
    # sample, which also gives FER faces age/gender/race targets and UTKFace faces emotion ones.
    teacher: str = ""
    distill_weight: float = 1.0
    distill_temperature: float = 2.0
    # The teacher sees each augmented face and its mirror image and teaches the mean of its two
    # outputs (its flip-averaged view is more accurate, see the model card) for one more forward pass.
    teacher_flip: bool = False
    # Augmentations to switch off (comma-separated AugmentConfig groups), to measure what each buys.
    augment_off: str = ""
    # Train (and validate) on faces resized to this many pixels (after augmentation at 112). At 64
    # a CPU step runs 2-3x the images/s of 112 (FER's faces are 48 px anyway), so a CPU run can
    # spend its first epochs there and finish at 112 with --init from the low-resolution best.pt, or
    # the model is served at that size (footfall-export writes a graph taking it; 56 px: the 2x2 mean
    # of the 112 px crop, about 2x the single-pass faces/s of 112 on the CPU).
    image_size: int = INPUT_SIZE
    # Levers for faces from other sources (see the module's docstring).
    emotion_loss: str = "ce"  # ce | la | balanced
    sampling: str = "uniform"  # uniform | balanced
    augment_strong: bool = False
    select_emotion: str = "acc"  # acc | macro_f1
    # Share of a FER face's soft emotion target given to FER2013's original label, the rest to the FER+
    # vote shares (0: FER+ alone). FER+'s crowd called many of the faces FER2013 found as angry, sad or
    # fear neutral (the two agree on 68 %): the lever for posed expressions read as neutral.
    emotion_original_mix: float = 0.0
    # Quantization-aware training (footfall_training.qat): the forward pass rounds weights and activations
    # as the INT8 export does; meant as a short fine-tune from --init (a float or pruned checkpoint).
    qat: bool = False

    @property
    def head_names(self) -> tuple[str, ...]:
        """The heads this run trains (``heads`` split at the commas)."""
        return tuple(self.heads.split(","))


def _age_targets(age: torch.Tensor, bins: torch.Tensor, sigma: float) -> torch.Tensor:
    d = -((bins[None, :] - age[:, None]) ** 2) / (2 * sigma**2)
    return torch.softmax(d, dim=1)


EFFECTIVE_NUMBER_BETA = 0.999


def class_balanced_weights(prior: torch.Tensor, faces: int, beta: float = EFFECTIVE_NUMBER_BETA) -> torch.Tensor:
    """Per-class loss weights (1 - beta) / (1 - beta^n) for n = faces x prior (Cui et al. 2019),
    scaled so that the average face's weight is 1.

    >>> [round(w, 2) for w in class_balanced_weights(torch.tensor([0.9, 0.1]), 10000).tolist()]
    [0.95, 1.49]
    """
    weights = (1 - beta) / (1 - beta ** (prior * faces).clamp(min=1))
    return weights / (prior * weights).sum()


class MultiTaskLoss(nn.Module):
    def __init__(self, cfg: TrainConfig, bins: torch.Tensor, emotion_prior: torch.Tensor | None = None,
                 emotion_faces: int = 0) -> None:
        """``emotion_prior``: share of each emotion among the training labels (``--emotion-loss la`` and
        ``balanced``), ``emotion_faces``: how many training faces carry one (``balanced``)."""
        super().__init__()
        self.cfg = cfg
        self.register_buffer("bins", bins)
        if cfg.emotion_loss not in ("ce", "la", "balanced"):
            raise ValueError(f"emotion_loss must be ce, la or balanced, not {cfg.emotion_loss!r}")
        if cfg.emotion_loss != "ce" and emotion_prior is None:
            raise ValueError(f"--emotion-loss {cfg.emotion_loss} needs the training labels' emotion prior")
        if not 0 <= cfg.emotion_original_mix <= 1:
            raise ValueError(f"emotion_original_mix must be within 0..1, not {cfg.emotion_original_mix}")
        if cfg.emotion_original_mix and cfg.emotion_target != "soft":
            raise ValueError("emotion_original_mix mixes into the soft target: it needs emotion_target soft")
        # (a class absent from a small subset would make its adjustment -inf)
        self.emotion_adjust = torch.log(emotion_prior.clamp(min=1e-4)) if cfg.emotion_loss == "la" else None
        self.emotion_weights = class_balanced_weights(emotion_prior, emotion_faces) \
            if cfg.emotion_loss == "balanced" else None
        self.heads = cfg.head_names
        # log variances for uncertainty weighting (Kendall, Gal & Cipolla 2018)
        self.log_vars = nn.Parameter(torch.zeros(4)) if cfg.weighting == "uncertainty" else None

    def forward(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        terms: dict[str, torch.Tensor] = {}
        m = ~torch.isnan(batch["age"])
        if "age" in self.heads and m.any():
            age = batch["age"][m]
            if cfg.age_loss == "ldl":
                logp = torch.log_softmax(out["age_logits"][m], dim=1)
                kl = F.kl_div(logp, _age_targets(age, self.bins, cfg.age_sigma), reduction="batchmean")
                terms["age"] = kl + 0.1 * F.l1_loss(out["age"][m], age)
            else:
                terms["age"] = F.huber_loss(out["age"][m], age, delta=5.0) / 5.0
        m = batch["gender"] >= 0
        if "gender" in self.heads and m.any():
            terms["gender"] = F.binary_cross_entropy_with_logits(out["gender_logit"][m], batch["gender"][m].float())
        m = batch["race"] >= 0
        if "race" in self.heads and m.any():
            terms["race"] = F.cross_entropy(out["race_logits"][m], batch["race"][m].long(), label_smoothing=0.05)
        m = batch["emotion"] >= 0
        if "emotion" in self.heads and m.any():
            logits = out["emotion_logits"][m]
            if self.emotion_adjust is not None:
                logits = logits + self.emotion_adjust.to(logits.device)
            labels = batch["emotion"][m].long()
            if cfg.emotion_target == "soft":
                target = batch["emotion_votes"][m]
                if cfg.emotion_original_mix:  # (a batch needs FER2013's labels only then)
                    target = emotion_soft_target(target, batch["emotion_original"][m], cfg.emotion_original_mix)
                per_face = -(target * torch.log_softmax(logits, 1)).sum(1)
            else:
                per_face = F.cross_entropy(logits, labels, label_smoothing=0.05, reduction="none")
            if self.emotion_weights is not None:
                per_face = per_face * self.emotion_weights.to(logits.device)[labels]
            terms["emotion"] = per_face.mean()
        names = HEADS
        weights = (cfg.w_age, cfg.w_gender, cfg.w_race, cfg.w_emotion)
        total = out["age"].new_zeros(())
        for i, (name, w) in enumerate(zip(names, weights)):
            if name in terms:
                if self.log_vars is not None:
                    total = total + torch.exp(-self.log_vars[i]) * terms[name] + 0.5 * self.log_vars[i]
                else:
                    total = total + w * terms[name]
        return total, {k: float(v.detach()) for k, v in terms.items()}


def emotion_soft_target(votes: torch.Tensor, original: torch.Tensor, mix: float) -> torch.Tensor:
    """The soft emotion target: FER+ vote shares (N, 7), with ``mix`` of the mass moved to FER2013's
    original label (N,) where one is known (>= 0).

    >>> votes = torch.tensor([[0.0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0.5, 0, 0, 0.5]])
    >>> emotion_soft_target(votes, torch.tensor([0, -1]), 0.4).tolist()
    [[0.4000000059604645, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6000000238418579], [0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.5]]
    """
    known = original >= 0
    onehot = F.one_hot(original.long().clamp(min=0), votes.shape[1]).to(votes.dtype)
    mixed = (1 - mix) * votes + mix * onehot
    return torch.where(known[:, None], mixed, votes)


def distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                      temperature: float) -> torch.Tensor:
    """Soft-target loss (Hinton et al. 2015) summed over the four heads, for every sample.

    Softmax heads (age distribution, race, emotion): KL divergence at ``temperature``, scaled
    by its square so gradients keep their size; gender: BCE to the teacher's probability.
    """
    total = student["gender_logit"].new_zeros(())
    for key in ("age_logits", "race_logits", "emotion_logits"):
        t = torch.softmax(teacher[key].float() / temperature, dim=1)
        s = torch.log_softmax(student[key].float() / temperature, dim=1)
        total = total + F.kl_div(s, t, reduction="batchmean") * temperature**2
    target = torch.sigmoid(teacher["gender_logit"].float())
    return total + F.binary_cross_entropy_with_logits(student["gender_logit"].float(), target)


@torch.no_grad()
def teacher_outputs(teacher: FaceNet | OnnxRuntimeTeacher, x: torch.Tensor, flip: bool) -> dict[str, torch.Tensor]:
    """The teacher's raw outputs on NCHW faces ``x``; with ``flip``, the mean over each face and its mirror.

    Logits are averaged (a geometric mean of the two distributions), which keeps them logits.

    >>> net = FaceNet(width=0.25).eval()
    >>> x = torch.rand(2, 3, 112, 112)
    >>> a, b = teacher_outputs(net, x, True), teacher_outputs(net, x.flip(3), True)
    >>> all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # a face and its mirror teach alike
    True
    """
    if not flip:
        return teacher(x.contiguous(memory_format=torch.channels_last))
    n = len(x)
    both = teacher(torch.cat([x, x.flip(3)]).contiguous(memory_format=torch.channels_last))
    return {k: (v[:n] + v[n:]) / 2 for k, v in both.items()}


class OnnxRuntimeTeacher:
    """A trained FaceNet run by ONNX Runtime on the CPU for distillation, with the module's raw outputs
    (the logits ``distillation_loss`` reads). On 2 idle cores a 112 px teacher, flip-averaged, took 0.48 s
    of PyTorch per batch of 96, against 0.18 s for a 56 px student's forward and backward pass; ONNX
    Runtime gives the same logits (to 1e-6) in 0.12 s.

    >>> net = FaceNet(width=0.25).eval()
    >>> x = torch.rand(2, 3, 112, 112)
    >>> fast, slow = OnnxRuntimeTeacher(net, threads=1)(x), net(x)
    >>> all(torch.allclose(fast[k], slow[k], atol=1e-4) for k in OnnxRuntimeTeacher.OUTPUTS)
    True
    """

    OUTPUTS = ("age_logits", "gender_logit", "race_logits", "emotion_logits")

    def __init__(self, net: FaceNet, threads: int) -> None:
        import io

        import onnxruntime as ort

        from footfall_training.export import trace_onnx

        graph = io.BytesIO()
        self.image_size = trace_onnx(net, graph, self.OUTPUTS).image_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.session.run(None, {"input": x.detach().float().contiguous().numpy()})
        return {k: torch.from_numpy(v) for k, v in zip(self.OUTPUTS, outputs)}


def load_teacher(path: Path, device: torch.device, threads: int) -> FaceNet | OnnxRuntimeTeacher:
    """The distillation teacher: ONNX Runtime on the CPU, the module itself on an accelerator."""
    net = load_checkpoint(path)
    if device.type == "cpu":
        return OnnxRuntimeTeacher(net, threads)
    return net.to(device).to(memory_format=torch.channels_last)


def to_batch(faces: FaceSet, index: np.ndarray, device: torch.device,
             images: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Labels and [0,1] float NCHW images of the samples at ``index`` (``images``: other crops of them)."""
    pixels = faces.images[index] if images is None else images
    img = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    batch = {"image": img.contiguous(memory_format=torch.channels_last)}
    for key in ("age", "gender", "race", "emotion", "emotion_votes", "emotion_original"):
        batch[key] = torch.from_numpy(getattr(faces, key)[index]).to(device)
    return batch


def emotion_prior(faces: FaceSet) -> torch.Tensor:
    """Share of each emotion (EMOTIONS order) among the faces' emotion labels."""
    from footfall_training.logit_adjust import label_prior

    return torch.from_numpy(label_prior(faces.emotion)).float()


def sampling_weights(faces: FaceSet) -> np.ndarray:
    """Probabilities of drawing each face for ``--sampling balanced``: a UTKFace face's weight is
    1/sqrt(faces in its age band x gender cell), so rare cells (infants, women over 60) come up more
    often without repeating their few faces as often as full balancing would; FER's faces keep
    their overall share.

    >>> from footfall.labels import EMOTIONS
    >>> n = 5
    >>> faces = FaceSet(np.zeros((n, 1, 1, 3), np.uint8), np.array([1, 1, 1, 70, np.nan], np.float32),
    ...                 np.array([0, 0, 0, 1, -1], np.int8), np.zeros(n, np.int8), np.full(n, -1, np.int8),
    ...                 np.zeros((n, len(EMOTIONS)), np.float32), np.array([0, 0, 0, 0, 1], np.int8))
    >>> sampling_weights(faces).round(3).tolist()  # the lone woman of 70 weighs sqrt(3) x each infant
    [0.169, 0.169, 0.169, 0.293, 0.2]
    """
    from footfall.labels import AGE_BANDS

    weights = np.ones(len(faces))
    utk = (faces.dataset == 0) & ~np.isnan(faces.age) & (faces.gender >= 0)
    band = np.zeros(len(faces), int)
    for i, (_, lo, hi) in enumerate(AGE_BANDS):
        band[(faces.age >= lo) & (faces.age < hi)] = i
    cell = band * 2 + faces.gender.astype(int)
    counts = np.bincount(cell[utk], minlength=2 * len(AGE_BANDS))
    weights[utk] = 1 / np.sqrt(counts[cell[utk]])
    weights[utk] *= utk.sum() / weights[utk].sum()  # the UTKFace faces' total share is unchanged
    return weights / weights.sum()


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """NCHW images resized to ``size`` pixels (antialiased), unchanged when already that size. At an
    integer ratio (112 -> 56) each output pixel is the mean of its 2x2 block, exactly what the inference
    worker's ``cv2.INTER_AREA`` serves a 56 px model, so such a model trains on the faces it is served."""
    if x.shape[-1] == size:
        return x
    if x.shape[-1] % size == 0:
        return F.avg_pool2d(x, x.shape[-1] // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def predict_torch(net: FaceNet, images: np.ndarray, device: torch.device, batch_size: int = 256,
                  image_size: int = INPUT_SIZE) -> Predictions:
    """Predictions of a PyTorch model on uint8 RGB images (N, 112, 112, 3), seen at ``image_size``."""
    net.eval()
    parts = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        x = resize_batch(x, image_size)
        out = net(normalize_batch(x).contiguous(memory_format=torch.channels_last))
        parts.append(Predictions(*(out[k].float().cpu().numpy() for k in HEADS)))
    return Predictions.concat(parts)


def evaluate_faces(net: FaceNet, faces: FaceSet, device: torch.device, image_size: int = INPUT_SIZE) -> dict:
    p = predict_torch(net, faces.images, device, image_size=image_size)
    return head_metrics(p, faces.age, faces.gender, faces.race, faces.emotion)


class EMA:
    """Exponential moving average of the weights with warm-up (decay rises from ~0.1)."""

    def __init__(self, net: FaceNet, decay: float) -> None:
        self.model = FaceNet.from_config(net.config).to(next(net.parameters()).device)
        self.model.load_state_dict(net.state_dict())
        self.model.eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, net: FaceNet) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        msd = net.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def run_dir(cfg: TrainConfig) -> Path:
    from footfall.config import ModelSettings

    return Path(ModelSettings().cache_dir) / "runs" / cfg.run


def train(cfg: TrainConfig, device: torch.device | None = None, train_set: FaceSet | None = None,
          val_set: FaceSet | None = None) -> Path:
    """Train (or resume) a run; returns the path of the best checkpoint."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = run_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_set = train_set if train_set is not None else load_split("train")
    val_set = val_set if val_set is not None else load_split("val")
    pipeline_images = None
    if cfg.crops in ("pipeline", "mixed"):
        from footfall_training.pipeline_crops import load_pipeline_split

        pipeline_images = load_pipeline_split("train").faces.images
        val_set = load_pipeline_split("val").faces  # what the model receives in service
        if cfg.crops == "pipeline":
            train_set.images, pipeline_images = pipeline_images, None
    elif cfg.crops != "dataset":
        raise ValueError(f"crops must be dataset, pipeline or mixed, not {cfg.crops!r}")
    heads = cfg.head_names
    if set(heads) != set(HEADS):
        # A single-task model learns from the faces labelled for its heads only: the others would
        # cost a forward/backward pass each and contribute no gradient.
        keep = labelled_for(train_set, heads)
        train_set = train_set.subset(keep)
        pipeline_images = pipeline_images[keep] if pipeline_images is not None else None
        val_set = val_set.subset(labelled_for(val_set, heads))
        log.info("heads %s: %d training and %d validation faces carry their labels", cfg.heads, len(train_set),
                 len(val_set))
    if cfg.limit:
        if pipeline_images is not None:
            raise ValueError("--limit works with --crops dataset or pipeline only")
        rng = np.random.default_rng(cfg.seed)
        train_set = train_set.subset(rng.permutation(len(train_set))[:cfg.limit])
        val_set = val_set.subset(rng.permutation(len(val_set))[:max(64, cfg.limit // 4)])

    last = out_dir / "last.pt"
    # The net's architecture: the run's own checkpoint's when resuming; else that of --init (a pruned
    # checkpoint keeps its channel counts), which must be the one the settings ask for; else the settings'.
    start = None
    resumed = torch.load(last, map_location=device, weights_only=False) if last.exists() else None
    wanted = NetConfig.from_dict(asdict(cfg))
    if resumed is not None:
        net_config = NetConfig.from_dict(resumed["config"])
    elif cfg.init:
        start = torch.load(cfg.init, map_location="cpu", weights_only=False)
        # Dropout and the strides have no weights of their own (a 3x3 stem's kernel starts a stride-4 stem,
        # FaceNet._load_from_state_dict): the run's settings choose them.
        net_config = replace(NetConfig.from_dict(start["config"]), dropout=cfg.dropout, output_stride=cfg.output_stride,
                             stem_stride=cfg.stem_stride)
        if wanted.shared_depth and not net_config.shared_depth:
            # A one-trunk net's weights start a branched one: each head group's late stages from the trunk's.
            net_config = replace(net_config, shared_depth=wanted.shared_depth)
            start = {**start, "ema": branched_state_dict(start["ema"], net_config)}
        if replace(net_config, channels=None, tag="", qat=False) != replace(wanted, tag="", qat=False):
            raise ValueError(f"--init {cfg.init} is {net_config.name}, not {wanted.name} (another width or "
                             f"architecture)")
    else:
        net_config = wanted
    if cfg.qat and not net_config.qat:
        net_config = replace(net_config, qat=True, tag="-".join(t for t in (net_config.tag, "qat") if t))
    net = FaceNet.from_config(net_config)
    if start is not None:
        net.load_state_dict(start["ema"])
        if net.emotion_bias.any():
            # A post-hoc adjustment of the shipped model, not something to learn around: training
            # goes on from the raw logits (footfall-export --emotion-bias sets it again).
            log.info("initial weights carry emotion bias %s: training without it", net.emotion_bias.tolist())
            net.emotion_bias.zero_()
        log.info("initialised from %s (epoch %s of its run)", cfg.init, start.get("epoch"))
    net = net.to(device).to(memory_format=torch.channels_last)
    criterion = MultiTaskLoss(cfg, net.age_bins.clone(), emotion_prior(train_set),
                              int((train_set.emotion >= 0).sum())).to(device)
    if cfg.sampling not in ("uniform", "balanced"):
        raise ValueError(f"sampling must be uniform or balanced, not {cfg.sampling!r}")
    draw = sampling_weights(train_set) if cfg.sampling == "balanced" else None
    decay, no_decay = [], []
    for p in list(net.parameters()) + list(criterion.parameters()):
        (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = len(train_set) // cfg.batch_size
    if cfg.max_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps)
    total_steps = steps_per_epoch * cfg.epochs
    ema = EMA(net, cfg.ema_decay)
    teacher = None
    if cfg.teacher:
        teacher = load_teacher(Path(cfg.teacher), device, cfg.threads)
    augment_config = (AugmentConfig.strong() if cfg.augment_strong else AugmentConfig()).without(
        cfg.augment_off.split(",") if cfg.augment_off else [])
    use_amp = device.type == "cuda"
    state = {"epoch": 0, "step": 0, "best_score": -1e9, "best_epoch": -1, "history": []}

    if resumed is not None:
        net.load_state_dict(resumed["model"])
        ema.model.load_state_dict(resumed["ema"])
        ema.updates = resumed["ema_updates"]
        opt.load_state_dict(resumed["optimizer"])
        criterion.load_state_dict(resumed["criterion"])
        state = resumed["state"]
        log.info("resumed %s at epoch %d (best %.4f at epoch %d)", last, state["epoch"], state["best_score"],
                 state["best_epoch"])
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    gen = torch.Generator().manual_seed(cfg.seed + state["epoch"])
    for epoch in range(state["epoch"], cfg.epochs):
        if epoch - state["best_epoch"] > cfg.patience and state["best_epoch"] >= 0:
            log.info("early stop: no improvement since epoch %d", state["best_epoch"])
            break
        net.train()
        epoch_rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        order = epoch_rng.permutation(len(train_set)) if draw is None else \
            epoch_rng.choice(len(train_set), size=len(train_set), p=draw)
        t0, seen, running = time.time(), 0, {}
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            images = None
            if pipeline_images is not None:
                images = train_set.images[idx]
                use = np.random.default_rng(state["step"]).random(len(idx)) < cfg.pipeline_share
                images[use] = pipeline_images[idx[use]]
            batch = to_batch(train_set, idx, device, images)
            augmented = augment(batch["image"], gen, augment_config)
            x = normalize_batch(resize_batch(augmented, cfg.image_size))
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _lr_factor(state["step"], total_steps, cfg.warmup_steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = net(x.contiguous(memory_format=torch.channels_last))
            loss, parts = criterion({k: v.float() for k, v in out.items()}, batch)
            if teacher is not None:
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    # the same augmented faces, at the resolution the teacher learned at
                    tx = x if teacher.image_size == cfg.image_size else normalize_batch(
                        resize_batch(augmented, teacher.image_size))
                    soft = teacher_outputs(teacher, tx, cfg.teacher_flip)
                parts["distill"] = distillation_loss(out, soft, cfg.distill_temperature)
                loss = loss + cfg.distill_weight * parts["distill"]
                parts["distill"] = float(parts["distill"].detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            ema.update(net)
            state["step"] += 1
            seen += len(idx)
            for k, v in parts.items():
                running[k] = 0.98 * running.get(k, v) + 0.02 * v
            if b % 50 == 0 or b == steps_per_epoch - 1:
                rate = seen / max(time.time() - t0, 1e-6)
                print(f"epoch {epoch + 1}/{cfg.epochs} step {b + 1}/{steps_per_epoch} "
                      f"{rate:.0f} img/s loss " + " ".join(f"{k}={v:.3f}" for k, v in running.items()),
                      flush=True)
        metrics = evaluate_faces(ema.model, val_set, device, cfg.image_size)
        score = selection_score(metrics, heads, cfg.select_emotion)
        summary = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        state["history"].append({"epoch": epoch + 1, "score": score, "seconds": time.time() - t0, **summary})
        state["epoch"] = epoch + 1
        improved = score > state["best_score"]
        if improved:
            state["best_score"], state["best_epoch"] = score, epoch + 1
        ckpt = {"model": net.state_dict(), "ema": ema.model.state_dict(), "ema_updates": ema.updates,
                "optimizer": opt.state_dict(), "criterion": criterion.state_dict(), "state": state,
                "config": {**asdict(cfg), **asdict(net.config)}}
        save_whole(ckpt, last)
        if improved:
            save_whole({"ema": ema.model.state_dict(), "config": ckpt["config"], "metrics": metrics,
                        "epoch": epoch + 1}, out_dir / "best.pt")
        print(f"epoch {epoch + 1} val {json.dumps(summary)} score={score:.4f}"
              f"{' (best)' if improved else ''} {time.time() - t0:.0f}s", flush=True)
    return out_dir / "best.pt"


def labelled_for(faces: FaceSet, heads: tuple[str, ...]) -> np.ndarray:
    """Indices of the faces that carry a label for at least one of ``heads``."""
    if not heads or not set(heads) <= set(HEADS):
        raise ValueError(f"heads must be among {', '.join(HEADS)}, got {', '.join(heads)}")
    has = {"age": ~np.isnan(faces.age), "gender": faces.gender >= 0, "race": faces.race >= 0,
           "emotion": faces.emotion >= 0}
    return np.flatnonzero(np.logical_or.reduce([has[h] for h in heads]))


def save_whole(obj: dict, path: Path) -> None:
    """torch.save to ``path`` whole or not at all (a run may be stopped at any moment, e.g. by a time box)."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, device: str = "cpu") -> FaceNet:
    """The EMA weights of a best/last checkpoint as an eval-mode FaceNet."""
    ckpt = torch.load(path, map_location=device, weights_only=False)
    net = FaceNet.from_config(NetConfig.from_dict(ckpt["config"]))
    net.load_state_dict(ckpt["ema"])
    # The resolution it learned at (--image-size): scoring a 64 px model on 112 px faces would
    # measure the mismatch, not the model.
    net.image_size = int(ckpt["config"].get("image_size", INPUT_SIZE))
    return net.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f, default in asdict(TrainConfig()).items():
        if isinstance(default, bool):
            parser.add_argument(f"--{f.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(f"--{f.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--device", default=None)
    args = vars(parser.parse_args(argv))
    device = args.pop("device")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    best = train(TrainConfig(**args), torch.device(device) if device else None)
    print(f"best checkpoint: {best}")


if __name__ == "__main__":
    main()
