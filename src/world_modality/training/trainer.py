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
from lerobot_policy_world_modality import POLICY_TYPES
from lerobot_policy_world_modality.errors import InputError, OutputExistsError
from lerobot_policy_world_modality.families import BACKBONE_FIELDS, FAMILY_OF_TYPE
from lerobot_policy_world_modality.world_transformer.configuration_world_transformer import (
    TOKEN_MODEL_TYPES,
    features_for,
)
from tqdm.auto import tqdm

from world_modality.atomic_io import output_folder, writing
from world_modality.data.integrity import verify_dataset
from world_modality.devices import resolve_device
from world_modality.locks import writer_lock
from world_modality.sim import check_dataset
from lerobot_policy_world_modality.encoders.spec import digest, encoder_input_shape
from lerobot_policy_world_modality.latent_cache import LatentCache
from lerobot_policy_world_modality.dataset_files import dataset_fingerprint, resolve_dataset_root
from lerobot_policy_world_modality.file_digests import verify_folder
from world_modality.training.checkpoint import (
    RETRAIN,
    STATE_FILE,
    TRAINING_STATE,
    check_inputs,
    check_resume,
    last_checkpoint,
    load_checkpoint,
    run_label,
    save_checkpoint,
)
from world_modality.training.data import (
    ROWS,
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


def build_config(opts: TrainOptions, cache: LatentCache, instructions: list[str], state_dim: int, action_dim: int,
                 features: dict[str, dict], cameras: list[str], device: torch.device,
                 codebook_size: int = 0) -> PreTrainedConfig:
    """The policy config of a new run: architecture from the options, inputs from the data.

    The world transformer reads the world latents only (its image key is the encoder's camera, None
    for an encoder that reads the state); the VLM families also read ``cameras`` (dataset camera keys: the main
    camera, then the wrist camera when the dataset keys name one). The fields set here (`POLICY_SET_BY_RUN`) may be
    repeated in ``opts.policy``, not contradicted."""
    spec = cache.spec
    reads_frames = not spec.reads_states
    inputs, outputs = features_for(opts.keys.state, state_dim, opts.keys.action, action_dim, spec.camera_key,
                                   encoder_input_shape(features, spec.camera_key), reads_frames)
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
            raise InputError(f"policy field {name}: given {value!r}, but {POLICY_SET_BY_RUN[name]} sets it to "
                             f"{from_run[name]!r}; give it there, once")


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

            self.wandb = wandb_lib.init(project="world-modality-vla", dir=str(run_dir), config=config,
                                        name=run_dir.name, resume="allow", id=wandb_run_id(run_dir))

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
def validation_loss(policy: PreTrainedPolicy, preprocessor, data: LatentBatches, batch_size: int,
                    memory_mode: str | None = None, seed: int = 0) -> dict[str, float]:
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
    return Accelerator(cpu=device.type == "cpu", mixed_precision="no",
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


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
    device = resolve_device(opts.device)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if opts.batch_size % processes:
        raise InputError(f"--batch-size {opts.batch_size} (the global batch) must be a multiple of the "
                         f"{processes} processes")
    accelerator = _accelerator(device)
    rank = 0 if accelerator is None else accelerator.process_index
    is_main = rank == 0
    if accelerator is not None and device.type != "cpu":  # this process's GPU (accelerate names the CPU "cpu:0")
        device = accelerator.device
    # With the world gate near 0, Adam's second moments of the cross-attention weights become subnormal
    # floats and a CPU step gets 3-20x slower (measured); flush them to zero (`wm` also does this at start,
    # before any thread pool exists, which is what makes it reach every OpenMP worker).
    torch.set_flush_denormal(True)
    last = last_checkpoint(run_dir)
    if last is not None and not opts.resume:
        raise OutputExistsError(f"{run_dir} already holds checkpoints (last: {last.name}); pass --resume to continue "
                                "it or choose another --out")
    if last is not None:  # before any work: an option the resumed run would not follow is refused
        check_resume(last, {name: getattr(opts, name) for name in RESUMED_OPTIONS}, opts.policy,
                     f"resuming {run_dir}")
    verify_dataset(resolve_dataset_root(opts.dataset)[0])  # before anything reads its files
    summary = check_dataset(opts.dataset, opts.keys)
    cache = LatentCache.load(opts.latents, dataset=opts.dataset)
    table = read_frame_table(opts.dataset, opts.keys)
    train_episodes, val_episodes = split_episodes(table, opts.val_fraction)

    if last is not None:
        checkpoint = load_checkpoint(last, device)
        policy, preprocessor, postprocessor = checkpoint.policy, checkpoint.preprocessor, checkpoint.postprocessor
        config = policy.config
        check_inputs(config, cache.spec, opts.keys, f"resuming {run_dir}")
        if checkpoint.meta["train_episodes"] != train_episodes:
            raise InputError(f"resuming {run_dir}: the training split differs from the checkpoint's "
                             f"({len(checkpoint.meta['train_episodes'])} vs {len(train_episodes)} episodes); "
                             "pass the same dataset and --val-fraction")
        verify_folder(last / TRAINING_STATE, RETRAIN)
        state = torch.load(last / TRAINING_STATE / STATE_FILE, weights_only=False)
        start_step = state["step"]
    else:
        codebook = _codebook(opts, cache) if opts.world_model_type in TOKEN_MODEL_TYPES else None
        config = build_config(opts, cache, table.instructions, table.state.shape[1], table.action.shape[1],
                              summary.features, [summary.keys[k] for k in ("image", "wrist") if summary.keys.get(k)],
                              device,
                              0 if codebook is None else len(codebook))
        state = None
        start_step = 0
    images = training_images(opts.dataset, config)
    labels = _coc_labels(opts, train_episodes)
    data_device = batch_device(images, device)
    batch_cache = cache.to(data_device)  # once: both splits gather from the same tensors
    train_data = LatentBatches(batch_cache, table, opts.keys, train_episodes, config.chunk_size, config.history_len,
                               config.num_future, images, labels, data_device)
    val_data = (LatentBatches(batch_cache, table, opts.keys, val_episodes, config.chunk_size, config.history_len,
                              config.num_future, images, labels, data_device) if val_episodes else None)

    if state is None:
        torch.manual_seed(opts.seed)
        policy = get_policy_class(config.type)(config).to(device)
        if codebook is not None:
            policy.centroids.copy_(codebook)
        preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=train_data.stats())
    policy.train()
    model = policy if accelerator is None else accelerator.prepare_model(policy)
    # The policy's parameter groups (the world gate in its own with gate_lr_multiplier); the scheduler
    # scales every group's learning rate alike.
    optimizer = config.get_optimizer_preset().build(policy.get_optim_params())
    scheduler = config.get_scheduler_preset().build(optimizer, max(opts.steps, 1))
    sampler = torch.Generator().manual_seed(opts.seed)
    precision = Precision.of(config, device)
    scaler = precision.grad_scaler()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.set_state(state["sampler_rng"])
        if scaler is not None and state.get("grad_scaler") is not None:
            scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    if rank > 0:  # its own random draws (e.g. flow noise), reproducible from the seed, rank and start step
        torch.manual_seed(hash((opts.seed, rank, start_step)))
    local_rows = slice(rank * opts.batch_size // processes, (rank + 1) * opts.batch_size // processes)

    meta = {
        "dataset": str(summary.root),
        "dataset_fingerprint": dataset_fingerprint(opts.dataset),
        "latents": str(cache.path),
        "encoder_spec_hash": cache.spec.spec_hash(),
        "tokens": opts.tokens,
        "policy": run_label(config),
        "coc_labels": opts.coc_labels,
        "seed": opts.seed,
        "batch_size": opts.batch_size,
        "processes": processes,
        "total_steps": opts.steps,
        "val_fraction": opts.val_fraction,
        "validation": "per instruction, the last ceil(val_fraction * n) episodes by episode index",
        "train_episodes": train_episodes,
        "val_episodes": val_episodes,
    }
    output_folder(run_dir, TRAINING_RUN_KIND)
    loggers = (_Loggers(run_dir, opts.wandb, {k: v for k, v in meta.items() if not k.endswith("_episodes")}, start_step)
               if is_main else None)
    grad_clip = config.optimizer_grad_clip_norm
    bar = tqdm(total=opts.steps, initial=start_step, desc=f"train {run_label(config)}",
               disable=not (opts.progress and is_main))
    checkpoint_dir = last
    frame_batches = None
    if images is not None:  # decoded ahead: a copy of the sampler draws the rows the loop will draw
        ahead = torch.Generator()
        ahead.set_state(sampler.get_state())
        frame_batches = PrefetchedFrames(images, (train_data.draw(opts.batch_size, ahead)[local_rows]
                                                  for _ in range(start_step, opts.steps)),
                                         data_workers(opts, device), pin_memory=device.type == "cuda")
    try:
        for step in range(start_step + 1, opts.steps + 1):
            t0 = time.perf_counter()
            # The global batch's rows (identical on every process), of which this process trains its slice.
            rows = train_data.draw(opts.batch_size, sampler)[local_rows]
            frames = None if frame_batches is None else next(frame_batches)
            assert frames is None or torch.equal(frames[ROWS], rows), "prefetched frames of other rows"
            batch = preprocess(preprocessor, train_data.batch(rows, frames))
            t1 = time.perf_counter()
            with precision.autocast():
                loss, logs = model(batch)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
            else:  # fp16: the loss scaled against underflow, the gradients unscaled before clipping
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
            if scaler is None:
                optimizer.step()
            else:  # skipped when the gradients are not finite; the scale then shrinks
                scaler.step(optimizer)
                scaler.update()
            scheduler.step()
            if accelerator is not None:  # the global batch's values: the mean of the processes' slices
                keys = sorted(logs)
                means = accelerator.reduce(torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=device), "mean")
                logs = dict(zip(keys, means.tolist()))
            if is_main and (step % opts.log_every == 0 or step == opts.steps):
                t2 = time.perf_counter()
                logs |= {"grad_norm": grad_norm.item(), "lr": scheduler.get_last_lr()[0],
                         "time_data_s": t1 - t0, "time_compute_s": t2 - t1}
                loggers.log(logs, step, "train")
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)
            if (step % opts.save_every == 0 or step == opts.steps) and not is_main:
                accelerator.wait_for_everyone()  # the main process writes the checkpoint
                checkpoint_dir = last_checkpoint(run_dir)
            elif step % opts.save_every == 0 or step == opts.steps:
                if val_data is not None:
                    loggers.log(validation_loss(policy, preprocessor, val_data, opts.val_batch_size), step, "val")
                training_state = {
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "sampler_rng": sampler.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "grad_scaler": None if scaler is None else scaler.state_dict(),
                }
                checkpoint_dir = save_checkpoint(run_dir, step, policy, preprocessor, postprocessor, meta, training_state)
                if accelerator is not None:
                    accelerator.wait_for_everyone()
    finally:
        bar.close()
        if frame_batches is not None:
            frame_batches.close()
        if loggers is not None:
            loggers.close()
    if checkpoint_dir is None:
        raise InputError(f"nothing to do: --steps {opts.steps} and the run starts at step {start_step}")
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
        raise InputError(f"model_type {opts.world_model_type} needs --tokens (a codebook fitted on these latents with `wm tokens`)")
    return WorldTokens.load(opts.tokens, latents=cache).centroids
