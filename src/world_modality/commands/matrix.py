"""``wm matrix``: run an experiment matrix (dataset, latents, arms x seeds, paired evaluations, report)."""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

from world_modality import matrix
from world_modality.choices import COUNT
from world_modality.commands import add_common, add_no_verify


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "matrix",
        help="run what is missing of an experiment matrix declared in a YAML file, then report",
        description=matrix.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG", help="matrix config (YAML; schema above)")
    parser.add_argument(
        "--out",
        default=None,
        metavar="RUN_DIR",
        help="run folder (default: outputs/matrix/<CONFIG file name without suffix>)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan (what is done, what is to do) and stop")
    parser.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run every step as a Ray task on the cluster at ADDRESS ('auto': the one started on this "
        "machine with `ray start --head`): each training run holding a GPU, each evaluation its "
        "workers' CPUs and, on GPU nodes, a share of a GPU for the policy; RUN_DIR (and the "
        "dataset) must be on storage every node sees",
    )
    parser.add_argument(
        "--export",
        default=None,
        metavar="DEST",
        help="merge each finished training, intervention and evaluation into the results-only folder "
        "DEST as it ends (as `wm report RUN_DIR --export DEST` does), and write DEST's report at "
        "the end: for machines that may not outlive the run (only the steps under way are lost). "
        "What DEST already holds is not run again: with a copy of DEST on a fresh machine, the "
        "run does only the rest, training an arm again only for results DEST lacks (accepted "
        "when its weights reproduce DEST's bit for bit)",
    )
    parser.add_argument(
        "--arms",
        default=None,
        metavar="ARM[,ARM...]",
        help="run only these arms (with their ablations and interventions): a piece of the matrix "
        "that merges with the others (same run folder, or --export into one DEST)",
    )
    parser.add_argument("--seeds", default=None, metavar="SEED[,SEED...]", help="run only these training seeds")
    parser.add_argument(
        "--trainings-per-gpu",
        type=COUNT,
        default=1,
        metavar="N",
        help="training runs that share one GPU at a time (default 1): small policies leave a GPU idle between "
        "their kernels, so N runs side by side finish sooner than one after another; the results are the same",
    )
    parser.add_argument(
        "--eval-workers",
        type=COUNT,
        default=None,
        metavar="N",
        help="simulator processes per evaluation on this machine instead of the file's evaluation.workers (fewer "
        "cores or less memory: each MetaWorld process holds ~0.8 GB); an episode's actions do not depend on it",
    )
    add_common(parser)
    add_no_verify(parser)
    parser.set_defaults(handler=_matrix)


def _matrix(args) -> int:
    config_path = Path(args.config)
    run_dir = Path(args.out) if args.out else Path("outputs/matrix") / config_path.stem
    config = matrix.load_config(config_path)
    if args.arms is not None or args.seeds is not None:
        config = config.piece(arms=_listed(args.arms, str, "--arms"), seeds=_listed(args.seeds, int, "--seeds"))
        print(
            f"piece of {config_path}: arms {', '.join(config.arms)}; training seeds {', '.join(map(str, config.seeds))}"
        )
    print(f"run folder: {run_dir.resolve()}")
    with ExitStack() as held:
        exporter = None
        if args.export and not args.dry_run:
            from world_modality.locks import writer_lock
            from world_modality.matrix.export import StepExporter

            held.enter_context(writer_lock(args.export))  # for the whole run: each step's export, then its report
            exporter = StepExporter(config, run_dir, args.export)
        matrix.run_matrix(
            config,
            run_dir,
            dry_run=args.dry_run,
            address=args.ray,
            on_step_done=exporter,
            held=args.export,
            machine=matrix.MachineLayout(args.trainings_per_gpu, args.eval_workers),
        )
        if not args.dry_run and (run_dir / "report" / "report.md").is_file():
            print(f"report: {run_dir.resolve() / 'report' / 'report.md'}")
        if exporter is not None:
            print(f"export's report: {exporter.finish()}")
    return 0


def _listed(value: str | None, kind: type, flag: str) -> list | None:
    """A comma-separated command-line list (None when not given)."""
    if value is None:
        return None
    try:
        return [kind(item.strip()) for item in value.split(",") if item.strip()]
    except ValueError:
        raise matrix.MatrixConfigError(
            f"{flag}: expected a comma-separated list of {kind.__name__}s, got {value!r}"
        ) from None
