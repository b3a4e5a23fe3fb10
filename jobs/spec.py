"""The job spec: one typed configuration tree, loaded from YAML once and validated at the edge.

    spec = load_spec("jobs/specs/smoke.yaml", overrides=["optim.lr=0.02", "train.epochs=3"])

Unknown keys and wrong types fail here, with the dotted field path in the message, before any Ray
worker starts. Each part of the job receives its own slice (`spec.model`, `spec.loader`, ...):
the model and loader sections are the `isrn_model` and `data_shards` sections themselves.

Names: the YAML document a user writes and submits is the *spec* (`JobSpec`); each of its sections
is a `*Config` class, as in `isrn_model` and `data_shards`. Every one is declared the project's one
way (`isrn_model.section.config_section`) and fails with `ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from data_shards.config import LoaderConfig, SynthConfig
from isrn_model.config import InferenceConfig, LossConfig, ModelConfig
from isrn_model.section import Section, config_section, section_fields
from jobs.credentials import is_credential
from jobs.errors import ConfigError
from jobs.overrides import apply_overrides
from jobs.tune.config import TuneConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECS_DIR = Path(__file__).resolve().parent / "specs"


@config_section
class SynthDataConfig(Section):
    """A generated WIDER-format data set built (with its shards) when the manifests are missing."""

    root: Path
    """Where the WIDER-format folders are generated (relative: to the folder the command runs in)."""
    train_images: int = Field(gt=0)
    """Images generated for the train split."""
    val_images: int = Field(gt=0)
    """Images generated for the val split (with the official ground-truth .mat files)."""
    seed: int = 0
    """Seed of the generator: the same seed gives byte-identical files."""
    shard_size_mb: float = Field(default=8.0, gt=0)
    """Target size of one WebDataset tar shard."""
    generator: SynthConfig = SynthConfig()
    """How the images are composed (data_shards/config.py)."""


def _bucketed(url: str | None) -> str | None:
    """An `s3:` URL must name its bucket; a typo such as `s3:///runs` or `s3:/bucket` would otherwise
    fail deep in boto3 or pyarrow, or become a local folder named `s3:`."""
    if url is not None and url.startswith("s3:") and not re.match(r"s3://[^/]+", url):
        raise ValueError(f"{url!r} names no bucket: write s3://BUCKET/prefix")
    return url


@config_section
class DataConfig(Section):
    shards: str
    """Shard root URL holding `train/` and `val/` manifests (s3://bucket/prefix or a path)."""
    synth: SynthDataConfig | None = None
    """Generate the data set and shards when they are missing (None: they must exist)."""
    boxes: Literal["face", "person"] = "face"
    """What the shards' boxes outline: faces (WIDER FACE; COCO-WholeBody's face boxes), or whole
    persons (COCO's person boxes). Checked against the shards' manifests before training."""

    _shards_bucket = field_validator("shards")(_bucketed)


@config_section
class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    """The optimiser: SGD with momentum (the paper's) or AdamW."""
    lr: float = Field(default=0.01, gt=0)
    """Peak learning rate for the whole global batch."""
    momentum: float = Field(default=0.9, ge=0, lt=1)
    """SGD momentum [paper: 0.9]."""
    weight_decay: float = Field(default=1e-4, ge=0)
    """L2 weight decay of conv and linear weights (norm weights and biases get none) [paper: 1e-4]."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear warm-up from warmup_factor × lr over this many steps."""
    warmup_factor: float = Field(default=0.001, gt=0, le=1)
    """The warm-up's starting fraction of lr."""
    schedule: Literal["step", "cosine", "constant"] = "step"
    """After warm-up: step decay at the milestones, cosine to 0, or constant."""
    milestones: tuple[float, ...] = (100 / 130, 120 / 130)
    """Step decay points as fractions of training (SRN: 100 and 120 of 130 epochs)."""
    gamma: float = Field(default=0.1, gt=0)
    """Factor applied to lr at each milestone: below 1 decays (SRN: 0.1); above 1 raises it."""

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < m < 1 for m in value) or list(value) != sorted(value):
            raise ValueError(f"milestones must be increasing fractions of training in (0, 1), got {value}")
        return value


@config_section
class TrainConfig(Section):
    epochs: int = Field(default=1, gt=0)
    """Passes over the training split."""
    grad_clip_norm: float | None = Field(default=10.0, gt=0)
    """Clip the gradients' global L2 norm to this (None: no clipping) [ours]."""
    grad_accum_steps: int = Field(default=1, gt=0)
    """Micro-batches per optimiser step (DDP all-reduces on the last one only)."""
    amp: bool = True
    """bf16 autocast on GPU; ignored on CPU."""
    seed: int = 0
    """Seed of the weights' initialisation and each rank's randomness (plus the rank)."""
    log_every_steps: int = Field(default=10, gt=0)
    """Log step metrics (losses, lr, images/s, data and compute time) every this many steps."""
    torch_threads: int | None = Field(default=None, gt=0)
    """torch.set_num_threads per worker (None: PyTorch's default)."""
    channels_last: bool = True
    """Weights in channels-last (NHWC) memory layout, and on a GPU the input images too: Tensor Cores
    convolve it without transposing, oneDNN's CPU convolutions without a reorder per call (the demo's
    model on 2 CPU threads, a 16-image training step: 50 ms an image against 65 ms)."""
    cudnn_benchmark: bool = True
    """GPU only: cuDNN times its convolution algorithms on the first batches of each input shape and
    keeps the fastest; the training crops have one size (loader.augment.out_size), so this is paid once."""
    compile: bool = True
    """GPU only: `torch.compile` the network's dense part (backbone, neck, heads), whose shapes are fixed
    by the crop size. Anchor matching, the losses and post-processing stay eager: their shapes follow
    the number of faces and detections in each batch. Ignored on CPU."""
    pin_memory: bool = True
    """GPU only: stage each batch in reusable page-locked host memory, so its copy to the GPU runs
    asynchronously and the loader's shared buffer is handed back at once; ignored on CPU."""


@config_section
class EvalConfig(Section):
    every_epochs: int = Field(default=1, gt=0)
    """Run the official WIDER FACE evaluation every this many epochs, and after the last."""
    image_grid: int = Field(default=8, ge=0)
    """Val images drawn (true boxes green, detections red) in the per-evaluation grid artifact."""
    amp: bool = True
    """GPU only: the network runs under bf16 autocast during evaluation (post-processing stays float32);
    ignored on CPU."""
    gallery_images: int = Field(default=64, ge=0)
    """Val images rank 0 keeps in memory during an evaluation (at val resolution) to crop the
    gallery of missed faces and false positives from; 0: no gallery."""


@config_section
class CheckpointConfig(Section):
    storage: str
    """Ray storage root: s3://bucket/prefix (a cluster) or a local path (one machine only)."""
    every_steps: int | None = Field(default=None, gt=0)
    """A checkpoint every this many steps besides each epoch end (None: epoch ends only)."""
    keep: int = Field(default=2, gt=0)
    """Best evaluated checkpoints kept by their own AP Hard (the latest is kept too, to resume)."""
    lease_timeout_s: float = Field(default=120, ge=1)
    """A run is written by one job at a time, which holds a lease in the run's storage folder and
    renews it every quarter of this (jobs/train/lease.py). A job that finds the lease of a driver
    that died (a lost head pod, a killed submitter) takes the run over once the lease has gone this
    long without renewal; a live one's is never taken."""

    _storage_bucket = field_validator("storage")(_bucketed)


@config_section
class TrackingConfig(Section):
    experiment: str
    """MLflow experiment of the job's runs."""
    log_model: bool = True
    """Log the best evaluated checkpoint as the face-detector model (an MLflow pyfunc of photos; what
    `isrn promote` registers)."""
    export_size: int = Field(default=640, ge=128, multiple_of=128)
    """Not read by models logged now: their pyfunc takes photos of any size and letterboxes them to its
    `max_size` parameter (default `loader.val_max_size`). Kept, with the shipped specs' values, so that
    specs and runs recorded by earlier versions (whose logged model was a square program of this side)
    load and resume unchanged."""
    registered_model: str = "isrn-face"
    """Registered model `isrn promote SPEC` promotes into."""


@config_section
class ScalingConfig(Section):
    num_workers: int = Field(default=2, gt=0)
    """Ray Train workers (DDP ranks), one per GPU on a GPU cluster."""
    use_gpu: bool = False
    """One GPU per worker, NCCL; else gloo on CPUs."""
    cpus_per_worker: float = Field(default=1.0, gt=0)
    """CPUs each worker reserves (its data loader processes run within them)."""
    max_failures: int = Field(default=1, ge=0)
    """Worker-group restarts from the latest complete checkpoint before the run fails."""
    collective_timeout_s: int = Field(default=300, gt=0)
    """DDP collective timeout; Ray's default of 1800 s hides hangs."""
    resources_timeout_s: float = Field(default=600, ge=0)
    """How long a job waits for the cluster (its autoscaler, or whoever adds nodes) to offer its
    workers before failing; a request no node could ever hold fails at once."""
    storage_outage_timeout_s: float = Field(default=600, ge=0)
    """When the checkpoint storage stops answering Ray Train's controller mid-run, how long the
    driver waits for it to answer again before failing; the run then continues from its newest
    complete checkpoint (each outage counts against `max_failures`)."""


@config_section
class JobSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """The spec's name: run names start with it."""
    model: ModelConfig = ModelConfig()
    """The detector (isrn_model/config.py)."""
    loss: LossConfig = LossConfig()
    """Matching and losses of both steps (isrn_model/config.py)."""
    inference: InferenceConfig = InferenceConfig()
    """Post-processing and test-time augmentation (isrn_model/config.py)."""
    loader: LoaderConfig = LoaderConfig()
    """Streaming, augmentation and batching (data_shards/config.py)."""
    data: DataConfig
    """Where the shards are, or how to generate them."""
    optim: OptimConfig = OptimConfig()
    """Optimiser and learning-rate schedule."""
    train: TrainConfig = TrainConfig()
    """The training loop."""
    eval: EvalConfig = EvalConfig()
    """Evaluation during training."""
    checkpoint: CheckpointConfig
    """Checkpoint storage and retention."""
    tracking: TrackingConfig
    """MLflow experiment, logged model and registry."""
    scaling: ScalingConfig = ScalingConfig()
    """Workers and their resources."""
    tune: TuneConfig | None = None
    """A Ray Tune study of this spec (jobs/tune/config.py); `isrn tune` needs it."""

    def __post_init__(self) -> None:
        if self.model.norm == "bn" and self.loader.batch_size < 2:
            raise ValueError("model.norm=bn needs loader.batch_size >= 2 per worker; use gn or frozen_bn")

    @field_validator("model")
    @classmethod
    def _init_from_bucket(cls, model: ModelConfig) -> ModelConfig:
        try:
            _bucketed(model.init_from)
        except ValueError as error:
            raise ValueError(f"init_from {error}") from None
        return model

    # ---- views -------------------------------------------------------------------------------
    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """sha256 of the resolved spec (what ran), independent of key order and comments."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def flat_params(self) -> dict[str, str]:
        """The spec flattened to `section.field` keys, as MLflow params (no nested dicts)."""
        return {key: _param_value(value) for key, value in flatten(self.to_dict()).items()}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested spec tree as `section.field` -> leaf value (an empty section is a leaf)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 500 else text[:497] + "..."  # MLflow rejects long param values


def resolve_spec_path(spec: str | Path) -> Path:
    """A spec file path, or a bare name of one in jobs/specs (`smoke` -> jobs/specs/smoke.yaml)."""
    path = Path(spec)
    if path.is_file():
        return path
    candidate = SPECS_DIR / f"{spec}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in SPECS_DIR.glob("*.yaml")))
    raise ConfigError(f"spec {spec!r} not found: give a YAML path or one of: {known}")


_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_env(node: Any, source: str, field: str = "") -> Any:
    """The raw spec tree with `${VAR}` and `${VAR:-default}` in its strings taken from the environment.

    Storage URLs name their bucket this way (`s3://${ISRN_SHARDS_BUCKET:-isrn-shards}/smoke`): the
    cluster's ConfigMap or `isrn platform env` sets the variable, the default is the local platform's
    bucket. As in the shell, the default applies when VAR is unset or empty; a `${VAR}` without one
    must be set and non-empty. Only the braced forms are read: any other `$` is left as written.
    A variable named like a credential (jobs/credentials.py) is refused, set or not, default or not.
    """
    if isinstance(node, dict):
        return {key: expand_env(value, source, f"{field}.{key}" if field else str(key)) for key, value in node.items()}
    if isinstance(node, list):
        return [expand_env(value, source, f"{field}.{i}") for i, value in enumerate(node)]
    if not isinstance(node, str):
        return node

    def value(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if is_credential(name):
            raise ConfigError(
                f"{source}: {field}: ${{{name}}} names a credential, which a spec may not read: the resolved "
                f"spec is logged to MLflow (params and an artifact) and travels with the job. The processes that "
                f"need {name} read it from their own environment (the local platform's head, a Kubernetes Secret, "
                f"an IAM role); write the value the field needs instead")
        if os.environ.get(name):
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{source}: {field}: ${{{name}}} is not set: export {name}, or write ${{{name}:-DEFAULT}}")

    return _ENV_REFERENCE.sub(value, node)


def load_spec(spec: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Load, override and validate a job spec; errors name the file and the dotted field."""
    if isinstance(spec, dict):
        source, raw = "<spec>", json.loads(json.dumps(spec))
    else:
        path = resolve_spec_path(spec)
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}\nfix the line shown") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level (name: …, data: …), "
                        f"got {type(raw).__name__}")
    raw = expand_env(apply_overrides(raw, overrides), source)
    try:
        return JobSpec.from_dict(raw, owner="")
    except ConfigError as error:
        hint = " (`isrn train SPEC --explain` lists every field)" if "unknown key" in str(error) else ""
        raise ConfigError(f"{source}: {error}{hint}") from None


REQUIRED = "(required)"


def explain(spec: JobSpec) -> str:
    """The resolved spec as a tree: each field's value, default (when it differs) and description."""
    lines: list[str] = []
    _explain_section(spec, type(spec), "", lines)
    return "\n".join(lines)


def _explain_section(value: Any, cls: Any, indent: str, lines: list[str]) -> None:
    for name, field in section_fields(cls).items():
        current = getattr(value, name)
        description = " ".join((field.description or "").split())
        if section_fields(type(current)):
            lines.append(f"{indent}{name}:{'  # ' + description if description else ''}")
            _explain_section(current, type(current), indent + "  ", lines)
            continue
        default = _plain(field.get_default(call_default_factory=True))
        shown = json.dumps(_plain(current))
        note = "" if default in (_plain(current), REQUIRED) else f"  (default {json.dumps(default)})"
        lines.append(f"{indent}{name}: {shown}{note}{'  # ' + description if description else ''}")


def _plain(value: Any) -> Any:
    from pydantic_core import PydanticUndefined

    if value is PydanticUndefined:
        return REQUIRED
    return json.loads(json.dumps(value, default=str))
