"""`wm train`: a thin plain-PyTorch loop for every world-modality policy family, on one process or
data-parallel on several (Hugging Face accelerate, as LeRobot).

Why not lerobot-train: it has no notion of a latent cache. Here the world latents (history and
future targets) come from the cache as a few tensor gathers; the world transformer decodes no image
at all, the VLM families (smolvla_world, qwen_vla_world) get the current camera frames decoded by
LeRobot. The policy, its processors (normalisation) and its checkpoints are LeRobot's own, so the
result loads with `lerobot-eval` and `from_pretrained`.

Per step: draw a batch of training frames (uniform, with replacement, from a seeded generator),
normalise it with the policy's preprocessor, forward, clip gradients, AdamW + warmup/cosine
(the config's LeRobot presets), computed as lerobot-train computes it for the same policy config: in the mixed
precision its rule picks (`lerobot_mixed_precision`: the config's `use_amp`, or `dtype` where a config has one;
fp16 with a gradient scaler, bf16 without), and for the VLM families with TF32 matrix products and cuDNN's
autotuner on CUDA (`lerobot_backend_flags`). The VLM families' camera frames are decoded ahead of the step by
background processes (`TrainOptions.data_workers`, `PrefetchedFrames`: the frames decoding them in the step
gives, so the same batches for the same seed). Every logged value goes to TensorBoard (and W&B when enabled);
the held-out episodes' action loss is logged at every checkpoint. The world-memory training recipes (README,
World-memory training recipes) are options of the policy config: the policy counts its own training steps
(a buffer saved with its weights), so the recipes' schedules and stages resume where they stopped, and its
optimizer parameter groups carry the gate's learning-rate multiplier.

Several processes (GPUs, nodes; gloo on CPU): start the same command under ``accelerate launch``, e.g.
``accelerate launch --num_processes 4 -m world_modality.cli train ...`` (see the README). ``--batch-size``
stays the global batch: every process draws the same global batch from the same seeded generator and
trains on its contiguous slice (batch size / processes rows), DDP averages the gradients, and only the
main process logs, validates and writes checkpoints (resume works as on one process). The averaged
gradient equals the one-process gradient when each process's loss is a plain mean over its rows; a loss
normalised by its own count of valid entries (e.g. padded action chunks at episode ends) weighs the
slices slightly differently, as in every DDP trainer.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lerobot.configs import PreTrainedConfig
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from lerobot.policies.pretrained import PreTrainedPolicy
from tqdm.auto import tqdm

from lerobot_policy_world_modality import POLICY_TYPES
from lerobot_policy_world_modality.dataset_files import dataset_fingerprint, resolve_dataset_root
from lerobot_policy_world_modality.encoders.spec import digest, encoder_input_shape
from lerobot_policy_world_modality.errors import InputError, OutputExistsError
from lerobot_policy_world_modality.families import BACKBONE_FIELDS, FAMILY_OF_TYPE
from lerobot_policy_world_modality.file_digests import verify_folder
from lerobot_policy_world_modality.latent_cache import LatentCache
from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import (
    TOKEN_MODEL_TYPES,
    features_for,
)
from world_modality.atomic_io import output_folder, writing
from world_modality.data.check import DatasetSummary
from world_modality.data.integrity import verify_dataset
from world_modality.devices import resolve_device
from world_modality.locks import writer_lock
from world_modality.sim import check_dataset
from world_modality.training.checkpoint import (
    RETRAIN,
    STATE_FILE,
    TRAINING_STATE,
    Checkpoint,
    check_inputs,
    check_resume,
    last_checkpoint,
    load_checkpoint,
    run_label,
    save_checkpoint,
)
from world_modality.training.data import (
    ROWS,
    FrameTable,
    LatentBatches,
    PrefetchedFrames,
    batch_device,
    read_frame_table,
    split_episodes,
    training_images,
)
from world_modality.training.options import POLICY_SET_BY_RUN, RESUMED_OPTIONS, TrainOptions

DATA_WORKERS = 4  # lerobot-train's default `num_workers`


def lerobot_mixed_precision(config: PreTrainedConfig) -> str:
    """The mixed precision lerobot-train trains ``config`` in, in accelerate's names ("no", "bf16", "fp16"), by
    LeRobot 0.6.1's rule (`lerobot.scripts.lerobot_train.train`): the config's `dtype` where it has that field,
    else with `use_amp` torch.autocast's default dtype on the config's device (bf16 on CPU, fp16 on CUDA); where
    neither decides, accelerate's own default: `accelerate launch --mixed_precision`, else "no"."""
    if hasattr(config, "dtype"):
        chosen = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}.get(config.dtype)
    elif config.use_amp:
        autocast_dtype = torch.get_autocast_dtype(torch.device(config.device).type)
        chosen = {torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype]
    else:
        chosen = None
    return chosen or os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()


@dataclass(frozen=True)
class Precision:
    """How a training step computes: a mixed precision of `lerobot_mixed_precision` on a device type, as accelerate
    applies it (autocast around the forward pass; for fp16 a gradient scaler)."""

    mixed_precision: str
    device_type: str

    @classmethod
    def of(cls, config: PreTrainedConfig, device: torch.device) -> Precision:
        return cls(lerobot_mixed_precision(config), device.type)

    def autocast(self):
        if self.mixed_precision == "no":
            return nullcontext()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[self.mixed_precision]
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.mixed_precision == "fp16" else None


@contextmanager
def lerobot_backend_flags(device: torch.device, policy_type: str) -> Iterator[None]:
    """lerobot-train's CUDA settings (TF32 matrix products, cuDNN's autotuner) in the block, for the families on a
    VLM backbone (LeRobot's SmolVLA, Qwen-VL), which train as lerobot-train trains them; the latents-only family keeps
    float32 matrix products, as its results so far were trained. Restored after the block, so that nothing else in the
    process (e.g. an evaluation) computes differently for a training having run."""
    if device.type != "cuda" or FAMILY_OF_TYPE[policy_type] not in BACKBONE_FIELDS:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = True, True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = before


def policy_config_class(policy_type: str) -> type[PreTrainedConfig]:
    if policy_type not in POLICY_TYPES:
        raise InputError(f"policy type must be one of {POLICY_TYPES}, got {policy_type!r}")
    import lerobot_policy_world_modality  # noqa: F401  (registers the plugin's config classes)

    return PreTrainedConfig.get_choice_class(policy_type)


def build_config(
    opts: TrainOptions,
    cache: LatentCache,
    instructions: list[str],
    state_dim: int,
    action_dim: int,
    features: dict[str, dict],
    cameras: list[str],
    device: torch.device,
    codebook_size: int = 0,
) -> PreTrainedConfig:
    """The policy config of a new run: architecture from the options, inputs from the data.

    The world transformer reads the world latents only (its image key is the encoder's camera, None
    for an encoder that reads the state); the VLM families also read ``cameras`` (dataset camera keys: the main
    camera, then the wrist camera when the dataset keys name one). The fields set here (`POLICY_SET_BY_RUN`) may be
    repeated in ``opts.policy``, not contradicted."""
    spec = cache.spec
    reads_frames = not spec.reads_states
    inputs, outputs = features_for(
        opts.keys.state,
        state_dim,
        opts.keys.action,
        action_dim,
        spec.camera_key,
        encoder_input_shape(features, spec.camera_key),
        reads_frames,
    )
    image_key = spec.camera_key if reads_frames else None
    wrist_key = None
    if opts.policy_type != "world_transformer":
        if not cameras:
            raise InputError(f"{opts.policy_type} reads a camera image, and the dataset has no camera feature")
        image_key, wrist_key = cameras[0], (cameras[1:] or [None])[0]
        for camera in cameras:
            inputs[camera] = PolicyFeature(type=FeatureType.VISUAL, shape=tuple(features[camera]["shape"]))
    config_class = policy_config_class(opts.policy_type)
    known = {f.name for f in dataclasses.fields(config_class)}
    from_run = {
        "instructions": instructions,
        "latent_dim": spec.output_dim,
        "encoder_spec": spec.to_dict(),
        "state_key": opts.keys.state,
        "action_key": opts.keys.action,
        "instruction_key": opts.keys.instruction,
        "image_key": image_key,
        "wrist_key": wrist_key,
        "input_features": inputs,
        "output_features": outputs,
        "device": str(device),
        "scheduler_decay_steps": opts.steps,
    }
    if opts.world_model_type is not None:
        from_run |= {"model_type": opts.world_model_type, "codebook_size": codebook_size}
    elif opts.model_type is not None:
        raise InputError(f"--model-type {opts.model_type} applies to world_transformer only, not {opts.policy_type}")
    unknown = sorted(set(opts.policy) - known)
    if unknown:
        raise InputError(f"{opts.policy_type} has no config field(s) {unknown}; its fields: {sorted(known)}")
    from_run = {k: v for k, v in from_run.items() if k in known}
    _refuse_contradictions(opts.policy, from_run)
    config = config_class(**{**from_run, **opts.policy})
    config.schedule_memory_source_over(opts.steps)  # `scheduled` without a schedule: over the first half
    return config


def _refuse_contradictions(overrides: dict[str, Any], from_run: dict[str, Any]) -> None:
    """A policy override of a field the run sets itself (`POLICY_SET_BY_RUN`) must say the same."""
    for name, value in overrides.items():
        if name in POLICY_SET_BY_RUN and name in from_run and value != from_run[name]:
            raise InputError(
                f"policy field {name}: given {value!r}, but {POLICY_SET_BY_RUN[name]} sets it to "
                f"{from_run[name]!r}; give it there, once"
            )


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run a run folder logs to (resumed with it): one per folder path, as a matrix's run folders share
    their names (train/<arm>/seed<k>)."""
    return digest(str(Path(run_dir).resolve()))


class _Loggers:
    """TensorBoard always, Weights & Biases on request."""

    def __init__(self, run_dir: Path, wandb: bool, config: dict[str, Any], resume_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = run_dir / "tensorboard"
        with writing(self.folder):
            self.tb = SummaryWriter(str(self.folder), purge_step=resume_step + 1 if resume_step else None)
        self.wandb = None
        if wandb:
            import wandb as wandb_lib

            self.wandb = wandb_lib.init(
                project="world-modality-vla",
                dir=str(run_dir),
                config=config,
                name=run_dir.name,
                resume="allow",
                id=wandb_run_id(run_dir),
            )

    def log(self, values: dict[str, float], step: int, prefix: str) -> None:
        with writing(self.folder):  # the event file is written by a thread: its failure shows at the next call
            for key, value in values.items():
                self.tb.add_scalar(f"{prefix}/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"{prefix}/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        with writing(self.folder):
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


@torch.no_grad()
def validation_loss(
    policy: PreTrainedPolicy,
    preprocessor,
    data: LatentBatches,
    batch_size: int,
    memory_mode: str | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Frame-weighted mean of the logged losses over every frame of ``data`` (eval mode, in the precision the policy
    trains in; the random draws of flow noise and of `random`/`shuffle` memory are seeded, so calls compare)."""
    was_training = policy.training
    policy.eval()
    totals: dict[str, float] = {}
    precision = Precision.of(policy.config, next(policy.parameters()).device)
    with torch.random.fork_rng(devices=[]), precision.autocast():
        torch.manual_seed(seed)
        for batch in data.sequential(batch_size):
            n = len(batch[data.keys.state])
            _, logs = policy.forward(preprocess(preprocessor, batch), memory_mode=memory_mode)
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + value * n
    policy.train(was_training)
    return {key: value / len(data) for key, value in totals.items()}


def _accelerator(device: torch.device):
    """The accelerate ``Accelerator`` of a multi-process launch (``accelerate launch`` sets WORLD_SIZE);
    None on a single process, whose loop then stays plain PyTorch."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # As lerobot-train: some families leave parameters unused in a step (e.g. memory modes, frozen towers).
    # Its own mixed precision off: `Precision` applies the policy's, on one process and on several alike.
    return Accelerator(
        cpu=device.type == "cpu",
        mixed_precision="no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


TRAINING_RUN_KIND = "training run"  # its folder's `atomic_io.OUTPUT_MARKER`


def train(opts: TrainOptions) -> Path:
    """Train one configuration into ``opts.out``; with ``resume``, continue from its last checkpoint
    (same data, options and RNG streams) up to ``opts.steps``. Returns the last checkpoint folder.
    Under ``accelerate launch`` every process runs this; see the module docstring. The run folder is held
    (`world_modality.locks`) by the main process, the one that writes it."""
    with lerobot_backend_flags(resolve_device(opts.device), opts.policy_type):
        if int(os.environ.get("RANK", "0")) > 0:
            return _train(opts)
        with writer_lock(opts.out):
            return _train(opts)


def _train(opts: TrainOptions) -> Path:
    run_dir = Path(opts.out).expanduser()
    processes = _Processes.of(opts)
    # With the world gate near 0, Adam's second moments of the cross-attention weights become subnormal
    # floats and a CPU step gets 3-20x slower (measured); flush them to zero (`wm` also does this at start,
    # before any thread pool exists, which is what makes it reach every OpenMP worker).
    torch.set_flush_denormal(True)
    last = _checkpoint_to_resume(opts, run_dir)
    inputs = _read_inputs(opts)
    if last is None:
        start = _new_start(opts, inputs, processes.device)
    else:
        start = _resumed_start(opts, run_dir, last, inputs, processes.device)
    train_data, val_data = _batches(opts, start.config, inputs, processes.device)
    policy, preprocessor, postprocessor = _policy(opts, start, train_data, processes.device)
    policy.train()
    if opts.compile:
        compile_layer_stacks(policy)
    model = policy if processes.accelerator is None else processes.accelerator.prepare_model(policy)
    optimisation = _Optimisation.of(opts, start.config, policy, processes.device, start.state)
    if processes.rank > 0:  # its own random draws (e.g. flow noise), reproducible from the seed, rank and start step
        torch.manual_seed(hash((opts.seed, processes.rank, start.step)))
    meta = _run_meta(opts, inputs, start.config, processes.count)
    output_folder(run_dir, TRAINING_RUN_KIND)
    loop = _Loop(
        opts, run_dir, processes, model, policy, preprocessor, postprocessor, optimisation, train_data, val_data, meta
    )
    return loop.run(start.step, last)


@dataclass(frozen=True)
class _Processes:
    """The processes a run trains on (several under ``accelerate launch``, data parallel) and this one among them."""

    count: int
    rank: int
    device: torch.device  # this process's
    accelerator: Any  # accelerate's ``Accelerator``; None on one process

    @classmethod
    def of(cls, opts: TrainOptions) -> _Processes:
        device = resolve_device(opts.device)
        count = int(os.environ.get("WORLD_SIZE", "1"))
        if opts.batch_size % count:
            raise InputError(
                f"--batch-size {opts.batch_size} (the global batch) must be a multiple of the {count} processes"
            )
        accelerator = _accelerator(device)
        if accelerator is not None and device.type != "cpu":  # this process's GPU (accelerate names the CPU "cpu:0")
            device = accelerator.device
        return cls(count, 0 if accelerator is None else accelerator.process_index, device, accelerator)

    @property
    def is_main(self) -> bool:
        """Whether this process logs, validates and writes checkpoints."""
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This process's contiguous slice of a global batch."""
        return slice(self.rank * batch_size // self.count, (self.rank + 1) * batch_size // self.count)


def _checkpoint_to_resume(opts: TrainOptions, run_dir: Path) -> Path | None:
    """The run folder's last checkpoint, which ``opts.resume`` continues (None: a new run). Refused before any work:
    checkpoints without --resume, and options the resumed run would not follow."""
    last = last_checkpoint(run_dir)
    if last is not None and not opts.resume:
        raise OutputExistsError(
            f"{run_dir} already holds checkpoints (last: {last.name}); pass --resume to continue "
            "it or choose another --out"
        )
    if last is not None:
        check_resume(last, {name: getattr(opts, name) for name in RESUMED_OPTIONS}, opts.policy, f"resuming {run_dir}")
    return last


@dataclass(frozen=True)
class _Inputs:
    """What a run reads: the dataset (verified and checked), its latent cache and frame table, and the episodes it
    trains and validates on."""

    summary: DatasetSummary
    cache: LatentCache
    table: FrameTable
    train_episodes: list[int]
    val_episodes: list[int]


def _read_inputs(opts: TrainOptions) -> _Inputs:
    verify_dataset(resolve_dataset_root(opts.dataset)[0])  # before anything reads its files
    summary = check_dataset(opts.dataset, opts.keys)
    cache = LatentCache.load(opts.latents, dataset=opts.dataset)
    table = read_frame_table(opts.dataset, opts.keys)
    return _Inputs(summary, cache, table, *split_episodes(table, opts.val_fraction))


@dataclass(frozen=True)
class _Start:
    """Where a run starts: step 0 with a new policy config (and the codebook of a model that predicts world tokens),
    or a checkpoint's step, policy and processors, and training state."""

    config: PreTrainedConfig
    step: int = 0
    checkpoint: Checkpoint | None = None
    state: dict[str, Any] | None = None  # the checkpoint's training state (`_Optimisation.training_state`)
    codebook: torch.Tensor | None = None


def _new_start(opts: TrainOptions, inputs: _Inputs, device: torch.device) -> _Start:
    codebook = _codebook(opts, inputs.cache) if opts.world_model_type in TOKEN_MODEL_TYPES else None
    summary, table = inputs.summary, inputs.table
    cameras = [summary.keys[k] for k in ("image", "wrist") if summary.keys.get(k)]
    config = build_config(
        opts,
        inputs.cache,
        table.instructions,
        table.state.shape[1],
        table.action.shape[1],
        summary.features,
        cameras,
        device,
        0 if codebook is None else len(codebook),
    )
    return _Start(config, codebook=codebook)


def _resumed_start(opts: TrainOptions, run_dir: Path, last: Path, inputs: _Inputs, device: torch.device) -> _Start:
    checkpoint = load_checkpoint(last, device)
    config = checkpoint.policy.config
    check_inputs(config, inputs.cache.spec, opts.keys, f"resuming {run_dir}")
    if checkpoint.meta["train_episodes"] != inputs.train_episodes:
        raise InputError(
            f"resuming {run_dir}: the training split differs from the checkpoint's "
            f"({len(checkpoint.meta['train_episodes'])} vs {len(inputs.train_episodes)} episodes); "
            "pass the same dataset and --val-fraction"
        )
    verify_folder(last / TRAINING_STATE, RETRAIN)
    state = torch.load(last / TRAINING_STATE / STATE_FILE, weights_only=False)
    return _Start(config, state["step"], checkpoint, state)


def _batches(
    opts: TrainOptions, config: PreTrainedConfig, inputs: _Inputs, device: torch.device
) -> tuple[LatentBatches, LatentBatches | None]:
    """The training split's batches and the validation split's (None: no episode held out)."""
    images = training_images(opts.dataset, config)
    labels = _coc_labels(opts, inputs.train_episodes)
    data_device = batch_device(images, device)
    cache = inputs.cache.to(data_device)  # once: both splits gather from the same tensors

    def split(episodes: list[int]) -> LatentBatches:
        return LatentBatches(
            cache,
            inputs.table,
            opts.keys,
            episodes,
            config.chunk_size,
            config.history_len,
            config.num_future,
            images,
            labels,
            data_device,
        )

    return split(inputs.train_episodes), split(inputs.val_episodes) if inputs.val_episodes else None


def _policy(opts: TrainOptions, start: _Start, train_data: LatentBatches, device: torch.device):
    """The policy and its pre- and postprocessor: the checkpoint's, or new ones (weights from the seed, normalisation
    from the training split's statistics)."""
    if start.checkpoint is not None:
        return start.checkpoint.policy, start.checkpoint.preprocessor, start.checkpoint.postprocessor
    torch.manual_seed(opts.seed)
    policy = get_policy_class(start.config.type)(start.config).to(device)
    if start.codebook is not None:
        policy.centroids.copy_(start.codebook)
    preprocessor, postprocessor = make_pre_post_processors(start.config, dataset_stats=train_data.stats())
    return policy, preprocessor, postprocessor


def compile_layer_stacks(policy: PreTrainedPolicy) -> None:
    """`TrainOptions.compile`: each of the policy family's layer stacks (its `compile_targets`: where a step launches
    most of its kernels) compiled by torch.compile, forward and backward. At VLA fine-tuning's batch sizes a step is
    bound by launching thousands of small kernels, which fusing each layer's elementwise work cuts; the rest of the
    step stays eager (the world memory's schedule, the logged values), so it computes what the eager step computes."""
    for module in policy.compile_targets():
        module.compile()


# The optimizer options that choose how an update is computed, not what it computes.
UPDATE_IMPLEMENTATION = ("foreach", "fused")


def fused(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same Adam or AdamW (parameter groups, hyper-parameters) with each update one fused kernel per parameter
    group instead of several per group (CUDA); any other optimizer as it is."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return optimizer
    options = {**optimizer.defaults, "foreach": None, "fused": True}
    accepted = inspect.signature(type(optimizer)).parameters  # AdamW keeps an option its constructor does not take
    groups = [{**group, "foreach": None, "fused": True} for group in optimizer.param_groups]
    return type(optimizer)(groups, **{k: v for k, v in options.items() if k in accepted})


@dataclass
class _Optimisation:
    """How a run's policy learns: the optimizer (the policy's parameter groups, the world gate in its own with
    gate_lr_multiplier; the scheduler scales every group's learning rate alike), the schedule, the sampler of the
    training rows and the precision, each continued from a checkpoint's training state when resuming."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: torch.Generator
    precision: Precision
    scaler: torch.amp.GradScaler | None
    grad_clip: float

    @classmethod
    def of(
        cls,
        opts: TrainOptions,
        config: PreTrainedConfig,
        policy: PreTrainedPolicy,
        device: torch.device,
        state: dict[str, Any] | None,
    ) -> _Optimisation:
        optimizer = config.get_optimizer_preset().build(policy.get_optim_params())
        if opts.compile and device.type == "cuda":
            optimizer = fused(optimizer)
        scheduler = config.get_scheduler_preset().build(optimizer, max(opts.steps, 1))
        precision = Precision.of(config, device)
        optimisation = cls(
            optimizer,
            scheduler,
            torch.Generator().manual_seed(opts.seed),
            precision,
            precision.grad_scaler(),
            config.optimizer_grad_clip_norm,
        )
        if state is not None:
            optimisation.resume(state, device)
        return optimisation

    def resume(self, state: dict[str, Any], device: torch.device) -> None:
        """Continue from ``state`` (`training_state`), this process's random streams included. How the update is
        computed (fused or not: `--compile` on CUDA) is this run's choice, not the checkpoint's."""
        implementation = [{k: g[k] for k in UPDATE_IMPLEMENTATION if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, chosen in zip(self.optimizer.param_groups, implementation, strict=True):
            group.update(chosen)
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.set_state(state["sampler_rng"])
        if self.scaler is not None and state.get("grad_scaler") is not None:
            self.scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)

    def training_state(self, step: int, device: torch.device) -> dict[str, Any]:
        """What a checkpoint keeps to resume after ``step``."""
        return {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler_rng": self.sampler.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def step(
        self, model: torch.nn.Module, parameters: Iterator[torch.nn.Parameter], batch: dict[str, Any]
    ) -> tuple[dict[str, float], torch.Tensor]:
        """One optimisation step on ``batch``: the logged values and the gradient norm before clipping."""
        with self.precision.autocast():
            loss, logs = model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
        else:  # fp16: the loss scaled against underflow, the gradients unscaled before clipping
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, self.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:  # skipped when the gradients are not finite; the scale then shrinks
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        return logs, grad_norm


def _run_meta(opts: TrainOptions, inputs: _Inputs, config: PreTrainedConfig, processes: int) -> dict[str, Any]:
    """What a checkpoint records of the run that wrote it."""
    return {
        "dataset": str(inputs.summary.root),
        "dataset_fingerprint": dataset_fingerprint(opts.dataset),
        "latents": str(inputs.cache.path),
        "encoder_spec_hash": inputs.cache.spec.spec_hash(),
        "tokens": opts.tokens,
        "policy": run_label(config),
        "coc_labels": opts.coc_labels,
        "seed": opts.seed,
        "batch_size": opts.batch_size,
        "compile": opts.compile,
        "processes": processes,
        "total_steps": opts.steps,
        "val_fraction": opts.val_fraction,
        "validation": "per instruction, the last ceil(val_fraction * n) episodes by episode index",
        "train_episodes": inputs.train_episodes,
        "val_episodes": inputs.val_episodes,
    }


@dataclass
class _Loop:
    """A run's steps up to ``opts.steps``: each logged (TensorBoard, W&B), every ``save_every`` steps and at the end
    validated and checkpointed, by the main process."""

    opts: TrainOptions
    run_dir: Path
    processes: _Processes
    model: torch.nn.Module  # the policy, wrapped for data parallelism on several processes
    policy: PreTrainedPolicy
    preprocessor: Any
    postprocessor: Any
    optimisation: _Optimisation
    train_data: LatentBatches
    val_data: LatentBatches | None
    meta: dict[str, Any]

    def run(self, start_step: int, last: Path | None) -> Path:
        """Train from ``start_step`` on; the last checkpoint folder (``last`` when no step is left)."""
        opts, is_main = self.opts, self.processes.is_main
        loggers = None
        if is_main:
            logged = {k: v for k, v in self.meta.items() if not k.endswith("_episodes")}
            loggers = _Loggers(self.run_dir, opts.wandb, logged, start_step)
        bar = tqdm(
            total=opts.steps,
            initial=start_step,
            desc=f"train {self.meta['policy']}",
            disable=not (opts.progress and is_main),
        )
        frame_batches = self._frames_ahead(start_step)
        checkpoint_dir = last
        try:
            for step in range(start_step + 1, opts.steps + 1):
                logs = self._step(step, frame_batches, loggers)
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)
                if step % opts.save_every == 0 or step == opts.steps:
                    checkpoint_dir = self._checkpoint(step, loggers)
        finally:
            bar.close()
            if frame_batches is not None:
                frame_batches.close()
            if loggers is not None:
                loggers.close()
        if checkpoint_dir is None:
            raise InputError(f"nothing to do: --steps {opts.steps} and the run starts at step {start_step}")
        return checkpoint_dir

    def _frames_ahead(self, start_step: int) -> PrefetchedFrames | None:
        """The camera frames of the rows the steps will draw, decoded ahead (None: the policy reads no frames)."""
        images = self.train_data.images
        if images is None:
            return None
        ahead = torch.Generator()  # a copy of the sampler draws the rows the loop will draw
        ahead.set_state(self.optimisation.sampler.get_state())
        rows = self.processes.rows(self.opts.batch_size)
        draws = (self.train_data.draw(self.opts.batch_size, ahead)[rows] for _ in range(start_step, self.opts.steps))
        device = self.processes.device
        return PrefetchedFrames(images, draws, data_workers(self.opts, device), pin_memory=device.type == "cuda")

    def _step(self, step: int, frame_batches: PrefetchedFrames | None, loggers: _Loggers | None) -> dict[str, float]:
        """One step on this process's slice of the global batch (the same rows on every process); its logged values,
        the processes' mean."""
        opts, processes = self.opts, self.processes
        t0 = time.perf_counter()
        rows = self.train_data.draw(opts.batch_size, self.optimisation.sampler)[processes.rows(opts.batch_size)]
        frames = None if frame_batches is None else next(frame_batches)
        assert frames is None or torch.equal(frames[ROWS], rows), "prefetched frames of other rows"
        batch = preprocess(self.preprocessor, self.train_data.batch(rows, frames))
        t1 = time.perf_counter()
        logs, grad_norm = self.optimisation.step(self.model, self.policy.parameters(), batch)
        if processes.accelerator is not None:  # the global batch's values: the mean of the processes' slices
            keys = sorted(logs)
            values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=processes.device)
            logs = dict(zip(keys, processes.accelerator.reduce(values, "mean").tolist()))
        if processes.is_main and (step % opts.log_every == 0 or step == opts.steps):
            t2 = time.perf_counter()
            logs |= {
                "grad_norm": grad_norm.item(),
                "lr": self.optimisation.scheduler.get_last_lr()[0],
                "time_data_s": t1 - t0,
                "time_compute_s": t2 - t1,
            }
            loggers.log(logs, step, "train")
        return logs

    def _checkpoint(self, step: int, loggers: _Loggers | None) -> Path:
        """Validate and write the checkpoint of ``step`` (the main process; the others wait for it); its folder."""
        accelerator = self.processes.accelerator
        if not self.processes.is_main:
            accelerator.wait_for_everyone()  # the main process writes the checkpoint
            return last_checkpoint(self.run_dir)
        if self.val_data is not None:
            loggers.log(
                validation_loss(self.policy, self.preprocessor, self.val_data, self.opts.val_batch_size), step, "val"
            )
        checkpoint_dir = save_checkpoint(
            self.run_dir,
            step,
            self.policy,
            self.preprocessor,
            self.postprocessor,
            self.meta,
            self.optimisation.training_state(step, self.processes.device),
        )
        if accelerator is not None:
            accelerator.wait_for_everyone()
        return checkpoint_dir


def data_workers(opts: TrainOptions, device: torch.device) -> int:
    """The processes that decode camera frames ahead of the step (`TrainOptions.data_workers`)."""
    if opts.data_workers is not None:
        return opts.data_workers
    return DATA_WORKERS if device.type == "cuda" else 0


def preprocess(preprocessor, batch: dict[str, Any]) -> dict[str, Any]:
    """The policy's preprocessor, keeping the CoC texts (LeRobot's pipeline drops keys it does not know)."""
    out = preprocessor(batch)
    if "coc_text" in batch:
        out["coc_text"] = batch["coc_text"]
    return out


def _coc_labels(opts: TrainOptions, train_episodes: list[int]) -> dict[int, str] | None:
    if opts.coc_labels is None:
        if opts.require_coc:
            raise InputError("--require-coc needs --coc-labels (a JSONL made by `wm coc generate`)")
        return None
    from world_modality.coc.labels import coc_texts_for, load_coc_labels

    labels = load_coc_labels(opts.coc_labels)
    coc_texts_for(labels, train_episodes, require=opts.require_coc)  # fail now, not at the first unlucky batch
    return labels


def _codebook(opts: TrainOptions, cache: LatentCache) -> torch.Tensor:
    """The fitted world-token centroids [K, D] that B and C predict (and C reads)."""
    from lerobot_policy_world_modality.world_tokens import WorldTokens

    if opts.tokens is None:
        raise InputError(
            f"model_type {opts.world_model_type} needs --tokens (a codebook fitted on these latents with `wm tokens`)"
        )
    return WorldTokens.load(opts.tokens, latents=cache).centroids
