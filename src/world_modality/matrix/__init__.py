"""The experiment matrix (docs/ARCHITECTURE.md, Experiment matrix): one declarative YAML file -> a dataset, world
latents of one or more encoders, every arm x training seed trained, every evaluation run on the same episode list,
and the report. Only what is missing runs: finished steps are skipped, an interrupted training resumes from its
last checkpoint and an interrupted evaluation from its episodes file; a training that runs again discards its
seed's earlier evaluations. The steps are one scheduling plan (`world_modality.schedule`): on a GPU machine (or
with `evaluation.concurrent: true`) the GPU trains the next arm or seed while the CPUs evaluate finished
checkpoints on one set of started simulator processes; `--ray ADDRESS` runs every step as a Ray task. Each
step's wall times go to RUN_DIR/profile.json. `--export DEST` merges each finished training, intervention and
evaluation into a results-only folder as it ends (`export`), and what DEST holds is not run again (a fresh
machine with a copy of DEST does only the rest; a checkpoint brought into RUN_DIR/train is evaluated without
regenerating its training data); `--arms A,B --seeds 2` runs only that piece of the file (`MatrixConfig.piece`);
`--trainings-per-gpu N` and `--eval-workers N` lay the work out for this machine without changing the results
(`MachineLayout`). `config` parses the file once into typed specs (`MatrixConfig`, an `ArmSpec` per arm
with its policy family's config built and validated), `run` plans and runs it.

Run folder::

    RUN_DIR/matrix.yaml                          the resolved config (the union of the pieces run here); a rerun
                                                 must agree with it
    RUN_DIR/dataset/                             the generated MetaWorld dataset (absent with dataset.path)
    RUN_DIR/latents/<encoder>/                   a world-latent cache per encoder (a trained/fitted encoder beside it)
    RUN_DIR/backbones/<name>/                    a random backbone folder the matrix wrote (`backbones:` with write)
    RUN_DIR/train/<arm>/seed<k>/                 a `wm train` run folder (checkpoints/, tensorboard/)
    RUN_DIR/intervene/<arm>/seed<k>.json         a `wm intervene` result (arms in `interventions`)
    RUN_DIR/eval/<label>/seed<k>/episodes.jsonl  one JSON line per episode (+ videos/); the label is the arm
                                                 (its own rollout memory mode) or <arm>:<mode> (an ablation)
    RUN_DIR/report/                              report.md, CSV tables and PNG plots (`wm report`)
    RUN_DIR/profile.json                         each step's wall-clock start and end, and the work it did

Config schema (YAML; ``[required]`` marks the only fields without a default)::

    dataset:                     # [required] exactly one of `path` and a simulator name
      path: DIR                  # an existing LeRobot dataset, used as it is
      metaworld:                 # or that simulator's expert demos generated into RUN_DIR/dataset
        tasks: reach-v3,push-v3  # [required] names, MT10, MT50 or a group; a string or a list
        episodes_per_task: 5     # [required]
        cameras: [corner2]       # and image_size (128), seed (0), render_quality (fast),
                                 # storage (image), workers (1): generate_metaworld_dataset's options
    encoders:                    # [required] world encoders (world sources); each arm reads one, default the first
      - name: learned            # [required] state | learned | dinov2 | vjepa2, each listed once
        learned_steps: 1500      # any other keyword of compute_latents: encoder_path, camera_key,
                                 # temporal_window, batch_size, device, seed, learned_options, ...
      - name: state              # (older files' `encoder: {name: ...}`, one mapping, still works)
    backbones:                   # the VLA families' backbones; an arm reads one with `backbone: NAME`
      smolvlm2-small: {write: smolvlm, size: small}   # random weights, written into RUN_DIR/backbones/<name>
                                 # (smolvlm: tiny | small; qwen3_vl: tiny | small; qwen2_5_vl: tiny)
      qwen3vl-2b: {path: /models/Qwen3-VL-2B-Instruct}  # a local Hugging Face folder (real weights)
    training:                    # defaults for every arm
      seeds: [0, 1, 2]           # training seeds (default [0])
      steps: 1000                # any TrainOptions or policy-config field, as in `arms`
      batch_size: 64
    arms:                        # [required] name -> TrainOptions fields (model_type, steps, batch_size,
      E0: {model_type: A}        # save_every, val_fraction, device, keys, policy, ...); policy-config fields
      E1: {model_type: F, world_memory_mode_train: zero, world_memory_mode_rollout: zero}
      E2: {model_type: F}        # (of the arm's policy family) may also be given directly: they go into `policy`
      E2-state: {model_type: F, encoder: state}          # `encoder`: the world source the arm reads
      E2-oracle: {model_type: F, memory_source: oracle}  # trained on the true future latents: the upper bound
      S-E0: {policy_type: smolvla_world, backbone: smolvlm2-small, use_world_module: false}  # LeRobot's SmolVLA
      S-E2: {policy_type: smolvla_world, backbone: smolvlm2-small}  # judged against S-E0, its own family's
    ablations:                   # arm -> rollout memory modes evaluated besides the arm's own
      E2: [zero, random, shuffle]  # pred | zero | random | signflip | shuffle | oracle | other (world-memory arms)
    interventions:               # arm -> `wm intervene` modes: validation action loss with the memory replaced,
      E2: [zero, shuffle]        # offline and cheap (zero | random | signflip | shuffle | oracle)
    evaluation:
      env: metaworld             # or libero (then suite: libero_spatial | libero_object | libero_goal |
                                 # libero_10 | libero_90, episodes = init states 0..N-1 of each task)
      tasks: null                # default: the dataset's tasks (LIBERO: the suite's tasks the policy knows)
      episodes_per_task: 10
      eval_seed: 1000            # every arm and ablation runs the same episode list
      workers: 2
      groups: 1                  # pipelined lockstep groups of the workers (wm eval --groups)
      videos_per_task: 0
      max_steps: null            # default: the simulator's episode limit
      concurrent: null           # true: train the next arm or seed while the CPUs evaluate finished checkpoints;
                                 # default: true with a GPU (`wm matrix --ray ADDRESS` runs every step on Ray)
    report:
      baseline: null             # the arm every other arm is compared with; default: per arm, the one arm of
                                 # its policy family and backbone without world memory on its world source, else
                                 # that family's one arm without world memory (several candidates: an error asking
                                 # for this field; one of another family than an arm it would judge: an error)

The matrix owns TrainOptions' dataset, latents, out, seed and resume. Every world-memory arm gets a verdict
against its baseline, with a read-check (did it read its memory? from its gate, its ablations and its
interventions). Rerunning with a changed dataset, encoder, evaluation episode list or options of an existing
arm is an error (use another run folder); adding encoders, arms, seeds, ablations or interventions, or changing
workers, groups, devices, video counts or the report's baseline, is allowed.
"""

from world_modality.matrix.config import (
    CONFIG_FILE,
    RESULTS_ONLY_FILE,
    ArmSpec,
    EvaluationConfig,
    MatrixConfig,
    MatrixConfigError,
    ReportConfig,
    load_config,
    parse_config,
    report_baseline,
)
from world_modality.matrix.profile import PROFILE_FILE, load_profile, stage_times
from world_modality.matrix.run import (
    MachineLayout,
    check_run_dir,
    dataset_dir,
    eval_dir,
    format_plan,
    latents_dir,
    plan,
    run_matrix,
    train_dir,
)

__all__ = [
    "CONFIG_FILE",
    "ArmSpec",
    "EvaluationConfig",
    "MachineLayout",
    "MatrixConfig",
    "MatrixConfigError",
    "PROFILE_FILE",
    "RESULTS_ONLY_FILE",
    "ReportConfig",
    "check_run_dir",
    "dataset_dir",
    "eval_dir",
    "format_plan",
    "latents_dir",
    "load_config",
    "load_profile",
    "parse_config",
    "plan",
    "report_baseline",
    "run_matrix",
    "stage_times",
    "train_dir",
]
