"""One scheduling plan for a matrix's work, and the executors that run it (docs/ARCHITECTURE.md, Experiment matrix).

A `Plan` is a list of `Step`s in a serial order: each step names the steps it needs (earlier in the list),
the resources it holds while it runs (CPUs, a share of GPUs) and a module-level function with its keyword
arguments. Every step writes its own files, and a step already finished on disk is marked ``done`` when the
plan is built, so a rerun skips it (resumption). The same plan runs on three executors:

- ``serial``: one step after another in this process, in the plan's order (today's `wm matrix`).
- ``local``: concurrent on this machine. Steps marked ``isolated`` (training) run each in a process of their
  own, as soon as their needs are met and their resources (GPUs, CPUs) are free; the other steps
  (evaluations, the report) run one at a time in this process. So while the CPUs evaluate finished
  checkpoints, the GPU trains the next arm or seed.
- ``ray``: every step a Ray task holding its resources (``num_cpus``, ``num_gpus``), its needs passed as
  object references so Ray starts it when they have finished; on a cluster the run folder must be on storage
  every node sees, and every node runs the same installed environment.

In this process, evaluations (steps with ``shares_pools``) get one `EnvPools`: evaluations of one episode
list reuse the started simulator processes. A Ray task starts its own pool.

Results do not depend on the executor: a step's output is a function of its inputs (files of the steps it
needs, seeds), never of what else runs beside it; reports are built from files only. Isolated steps and Ray
tasks run in processes of their own, so they share no random-number state or thread settings with this one
(CPU training is bit-identical only at the same torch thread count: Ray gives a task ``num_cpus`` threads).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from lerobot_policy_world_modality.errors import BUG_REPORT, InputError, SetupError, WorldModalityError
from world_modality import interrupts
from world_modality.locks import held_tokens, within

EXECUTORS = ("serial", "local", "ray")
Executor = Literal["serial", "local", "ray"]
# The GPU share an evaluation's policy holds; a training run on a GPU holds the rest of one GPU, so one
# evaluation runs beside each training run on a one-GPU machine.
EVAL_GPU_SHARE = 0.2
# How long an interrupted run waits for a step's process to unwind (e.g. finish writing a checkpoint) before killing it.
STOP_TIMEOUT_S = 30.0
# How often a step's process checks that the process that started it is still there.
DRIVER_POLL_S = 1.0


class PlanError(InputError):
    """An invalid plan (the message names the step)."""


class StepFailed(WorldModalityError, RuntimeError):
    """A step raised; the message names it and carries its traceback."""


@dataclass(frozen=True)
class Resources:
    """What a step holds while it runs: logical CPUs and GPUs (fractions share a GPU), as Ray counts them."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self):
        if self.cpus < 0 or self.gpus < 0:
            raise PlanError(f"resources must be non-negative, got cpus={self.cpus}, gpus={self.gpus}")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise PlanError(f"more than one GPU must be a whole number, got gpus={self.gpus}")


def train_resources(gpu: bool, cpus: float = 1.0, per_gpu: int = 1) -> Resources:
    """A training run: on a GPU machine its share of the GPU (less an evaluation's share) when ``per_gpu`` runs
    share one (small models leave a GPU idle between their kernels), and no reserved core (its host thread runs
    beside the simulator workers, which yield to it: `world_modality.rollout.envs.WORKER_NICENESS`); without a
    GPU, ``cpus`` cores."""
    if per_gpu < 1:
        raise PlanError(f"trainings per GPU must be at least 1, got {per_gpu}")
    return Resources(cpus=0.0, gpus=(1.0 - EVAL_GPU_SHARE) / per_gpu) if gpu else Resources(cpus=cpus)


def eval_resources(workers: int, gpu: bool) -> Resources:
    """An evaluation (or one shard of it): a core per simulator worker and, on a GPU machine, a share of a
    GPU for the policy. Executors cap the cores at what one machine has (more workers than cores is how
    pipelined lockstep groups are run)."""
    return Resources(cpus=float(workers), gpus=EVAL_GPU_SHARE if gpu else 0.0)


@dataclass(frozen=True)
class Step:
    """One unit of work: ``fn(**kwargs)`` (plus ``pools=`` when ``shares_pools``)."""

    name: str  # unique in the plan
    stage: str  # dataset | latents | train | eval | report, or any label
    fn: Callable[..., Any]  # a module-level function: processes and Ray tasks import it by name
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    resources: Resources = Resources()
    done: bool = False  # finished on disk when the plan was built: skipped
    isolated: bool = False  # the local executor runs it in a process of its own (training)
    shares_pools: bool = False  # takes ``pools`` (started simulator pools; None on Ray: its own)
    detail: str = ""
    work: Mapping[str, int] = field(default_factory=dict)  # what it does, e.g. {"episodes": 20}: for profiles


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]

    def __init__(self, steps: Sequence[Step]):
        object.__setattr__(self, "steps", tuple(steps))
        seen: set[str] = set()
        for step in self.steps:
            if step.name in seen:
                raise PlanError(f"two steps are named {step.name!r}; step names must be unique")
            later = [n for n in step.needs if n not in seen]
            if later:
                known = {s.name for s in self.steps}
                what = "no such step" if any(n not in known for n in later) else "it comes later in the plan"
                raise PlanError(f"step {step.name!r} needs {later}: {what} (a step may only need steps before it)")
            if not callable(step.fn) or "<locals>" in getattr(step.fn, "__qualname__", "<locals>"):
                raise PlanError(
                    f"step {step.name!r}: fn must be a module-level function (processes and Ray tasks "
                    f"import it by name), got {step.fn!r}"
                )
            seen.add(step.name)

    @property
    def todo(self) -> list[Step]:
        return [s for s in self.steps if not s.done]


def default_executor(concurrent: bool | None = None, address: str | None = None) -> Executor:
    """``ray`` with a cluster address; otherwise ``local`` when ``concurrent`` (by default: when a GPU is
    present, so the GPU trains while the CPUs evaluate), else ``serial``."""
    if address is not None:
        return "ray"
    if concurrent is None:
        concurrent = gpus_available("local")
    return "local" if concurrent else "serial"


StepDone = Callable[[Step, float, float], None]


def execute(
    plan: Plan,
    executor: Executor = "serial",
    *,
    address: str | None = None,
    cpus: int | None = None,
    gpus: int | None = None,
    log: Callable[[str], None] = print,
    on_done: StepDone | None = None,
) -> None:
    """Run every step of ``plan`` not yet done. ``address``: the Ray cluster (``auto``: the one started on this
    machine with ``ray start --head``; None: a local Ray instance). ``cpus``/``gpus``: what the local executor
    may use (default: this machine's cores and CUDA devices). ``on_done(step, start, end)``: called (from one
    thread at a time) when a step has finished, with its wall-clock start and end (`time.time`; a process of
    its own counts from its start, a Ray task from when it began running)."""
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; available: {', '.join(EXECUTORS)}")
    todo = plan.todo
    log(f"{len(plan.steps)} steps: {len(plan.steps) - len(todo)} done, {len(todo)} to do ({executor})")
    if not todo:
        return
    on_done = on_done or (lambda step, start, end: None)
    if executor == "ray":
        _execute_ray(plan, address, log, on_done)
        return
    from world_modality.rollout.pools import EnvPools

    with EnvPools() as pools:
        if executor == "serial":
            for i, step in enumerate(todo, 1):
                log(f"[{i}/{len(todo)}] {step.name}" + (f": {step.detail}" if step.detail else ""))
                start = time.time()
                _call(step, pools)
                refused = _accepted(step, start, time.time(), on_done)
                if refused is not None:
                    raise StepFailed(f"step {step.name!r} failed: {refused}")
        else:
            _LocalRun(plan, _capacity(cpus, gpus), pools, log, on_done).run()


def _call(step: Step, pools: Any) -> None:
    step.fn(**step.kwargs, **({"pools": pools} if step.shares_pools else {}))


def gpus_available(executor: Executor) -> bool:
    """Whether the plan's steps may hold GPUs: this machine's CUDA devices, or on Ray (joined already) the
    cluster's."""
    if executor == "ray":
        import ray

        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def _capacity(cpus: int | None, gpus: int | None) -> Resources:
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    return Resources(cpus=float(cpus if cpus is not None else os.cpu_count() or 1), gpus=float(gpus))


# --- local: isolated steps in processes of their own, the others one at a time in this process -------


def _child(conn, environment: dict[str, str], payload: bytes, driver: int) -> None:
    os.environ.update(environment)  # before the step's function touches CUDA
    threading.Thread(target=_end_with_the_driver, args=(driver,), daemon=True).start()
    fn, kwargs = pickle.loads(payload)
    # SIGTERM (the main process stopping the step, or sent to the whole group) unwinds the step, so its files stay
    # valid and its resources are released; the interrupted main process reports it.
    with interrupts.raised_in_main():
        try:
            fn(**kwargs)
            conn.send(None)
        except KeyboardInterrupt:
            return
        except BaseException as e:
            conn.send(_failure(e))


def _end_with_the_driver(driver: int) -> None:
    """In a step's process: once the process that started it (``driver``) is gone, SIGTERM ends the step as an
    interrupt does. A driver killed outright cannot stop its steps, and a training left running would hold its GPU
    and its output's lock against the rerun."""
    while os.getppid() == driver:
        time.sleep(DRIVER_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)


def _failure(error: BaseException) -> str:
    """How a step's failure is reported: one of the project's own errors by its own paragraph (it says what to do),
    anything else, a bug, by its traceback and the line asking to report it (as `wm` reports errors)."""
    if isinstance(error, WorldModalityError):
        return str(error)
    return f"{traceback.format_exc()}{BUG_REPORT}"


def _accepted(step: Step, start: float, end: float, on_done: StepDone) -> str | None:
    """Hand a finished step to ``on_done``; its error (e.g. an export refusing the step's result) is the step's
    failure, so the steps that need it do not run (every executor alike)."""
    try:
        on_done(step, start, end)
    except Exception as e:  # noqa: BLE001 - reported as the step's failure
        return f"after it ended: {type(e).__name__}: {e}"
    return None


class _LocalRun:
    def __init__(self, plan: Plan, capacity: Resources, pools: Any, log: Callable[[str], None], on_done: StepDone):
        self.plan, self.pools, self.log, self.on_done = plan, pools, log, on_done
        self.capacity = capacity
        self.free_cpus = capacity.cpus
        self.free_gpus = [1.0] * int(capacity.gpus)  # free share of each device
        self.finished = {s.name for s in plan.steps if s.done}
        self.waiting = [s for s in plan.steps if not s.done]
        self.running: dict[str, tuple[Step, list[tuple[int, float]]]] = {}
        self.started: dict[str, float] = {}  # wall-clock start of each running step
        self.processes: dict[str, mp.process.BaseProcess] = {}
        self.failures: list[str] = []
        self.stopped = False  # the run has ended (finished or interrupted): no step starts or reports any more
        self.changed = threading.Condition()
        self.started_at = time.perf_counter()
        self.count = 0
        for step in self.waiting:
            self._request(step)  # fail before starting anything

    def _request(self, step: Step) -> Resources:
        """The step's resources, capped at the machine's (a step asking for more runs alone)."""
        r = step.resources
        if r.gpus > 0 and not self.free_gpus:
            raise PlanError(
                f"step {step.name!r} needs {r.gpus} GPU(s) and this machine has none; build the plan "
                "without GPUs (train_resources(gpu=False), eval_resources(..., gpu=False))"
            )
        return Resources(cpus=min(r.cpus, self.capacity.cpus), gpus=min(r.gpus, len(self.free_gpus)))

    def _take(self, step: Step) -> list[tuple[int, float]] | None:
        """Reserve the step's resources: (device, share) pairs, or None when they are not free now.
        A step in this process uses the first device (a policy's ``auto`` device)."""
        need = self._request(step)
        if need.cpus > self.free_cpus:
            return None
        if need.gpus == 0:
            devices: list[tuple[int, float]] = []
        elif need.gpus >= 1:
            whole = [d for d, free in enumerate(self.free_gpus) if free >= 1 - 1e-9][: int(need.gpus)]
            if len(whole) < need.gpus:
                return None
            devices = [(d, 1.0) for d in whole]
        else:
            candidates = range(len(self.free_gpus)) if step.isolated else [0]
            fits = [d for d in candidates if self.free_gpus[d] >= need.gpus - 1e-9]
            if not fits:
                return None
            devices = [(max(fits, key=lambda d: self.free_gpus[d]), need.gpus)]
        self.free_cpus -= need.cpus
        for device, share in devices:
            self.free_gpus[device] -= share
        return devices

    def _release(self, step: Step, devices: list[tuple[int, float]]) -> None:
        self.free_cpus += self._request(step).cpus
        for device, share in devices:
            self.free_gpus[device] += share

    def _ready(self, step: Step) -> bool:
        return all(n in self.finished for n in step.needs)

    def _announce(self, step: Step) -> None:
        self.started[step.name] = time.time()
        self.count += 1
        self.log(
            f"[{self.count}/{len(self.plan.todo)}] {step.name}"
            + (f": {step.detail}" if step.detail else "")
            + f" (t={time.perf_counter() - self.started_at:.0f}s)"
        )

    def _start_isolated(self) -> None:
        """Start every isolated step that is ready and whose resources are free (caller holds the lock)."""
        for step in list(self.waiting):
            if not step.isolated or not self._ready(step) or self.failures or self.stopped:
                continue
            devices = self._take(step)
            if devices is None:
                continue
            self.waiting.remove(step)
            self.running[step.name] = (step, devices)
            self._announce(step)
            environment = {"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d, _ in devices)} if devices else {}
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe(duplex=False)
            process = ctx.Process(
                target=_child,
                args=(child, environment, pickle.dumps((step.fn, dict(step.kwargs))), os.getpid()),
                name=f"step {step.name}",
            )
            with interrupts.child_processes():  # interrupts reach this process alone, which stops the step's process
                process.start()
            child.close()
            self.processes[step.name] = process
            threading.Thread(target=self._await, args=(step, parent, process), daemon=True).start()

    def _await(self, step: Step, conn, process) -> None:
        try:
            error = conn.recv()
        except EOFError:
            process.join()
            error = f"its process ended with exit code {process.exitcode} before reporting"
        process.join()
        self._finish(step, error)

    def _finish(self, step: Step, error: str | None) -> None:
        with self.changed:
            if self.stopped:  # interrupted: the step's process was stopped, nothing ran to the end
                return
            _, devices = self.running.pop(step.name)
            self.processes.pop(step.name, None)
            self._release(step, devices)
            start = self.started.pop(step.name)
            if error is None:
                error = _accepted(step, start, time.time(), self.on_done)
            if error is None:
                self.finished.add(step.name)
            else:
                separator = "\n" if "\n" in error else " "  # a traceback below, a paragraph on the line
                self.failures.append(f"step {step.name!r} failed:{separator}{error}")
                self.log(f"step {step.name!r} failed; waiting for the running steps to finish")
            self._start_isolated()
            self.changed.notify_all()

    def _next_here(self) -> Step | None:
        """The first ready in-process step whose resources are free, reserved (caller holds the lock)."""
        for step in self.waiting:
            if not step.isolated and self._ready(step):
                devices = self._take(step)
                if devices is not None:
                    self.waiting.remove(step)
                    self.running[step.name] = (step, devices)
                    self._announce(step)
                    return step
        return None

    def _wait_for_work(self) -> Step | None:
        """The next step to run in this process (resources reserved); None when no step runs or can start."""
        with self.changed:
            while True:
                self._start_isolated()
                step = None if self.failures else self._next_here()
                if step is not None or not self.running:
                    return step
                self.changed.wait()

    def run(self) -> None:
        try:
            while (step := self._wait_for_work()) is not None:
                try:
                    _call(step, self.pools)
                    error = None
                except Exception as e:
                    error = _failure(e)
                self._finish(step, error)
        finally:
            with self.changed:
                self.stopped = True
                processes = list(self.processes.values())
            for process in processes:  # interrupted: stop the steps' processes, and wait for them to unwind
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join(timeout=STOP_TIMEOUT_S)
                if process.is_alive():
                    process.kill()
        if self.failures:
            raise StepFailed("\n".join(self.failures))
        if self.waiting:  # cannot happen with capped resources; say so rather than return quietly
            raise RuntimeError(f"steps never became ready: {[s.name for s in self.waiting]}")


# --- ray ------------------------------------------------------------------------------------------------


def _ray_step(fn: Callable[..., Any], kwargs: Mapping[str, Any], writer_tokens: str) -> tuple[float, float]:
    """A step as a Ray task, writing within the outputs its driver holds (``writer_tokens``: `locks.held_tokens`).
    Returns its wall-clock start and end."""
    start = time.time()
    with within(writer_tokens):
        fn(**kwargs)
    return start, time.time()


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray joined for the block: the cluster at ``address`` (see `init_ray`), unless this process has
    joined one already (then it stays joined)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        init_ray(address)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def init_ray(address: str | None = None, **options: Any) -> None:
    """Join the Ray cluster at ``address``, or start a local instance (None) on the loopback interface only,
    so nothing outside this machine joins it. Workers use the interpreter Ray runs under: the cluster's
    nodes hold the locked environment (README: the offline install)."""
    # Under `uv run`, Ray would otherwise start every worker through `uv run` again, which needs a `uv`
    # executable on PATH and may re-resolve the environment: workers then fail to start where neither holds.
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    import ray
    from ray._private import ray_constants

    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False  # read at import: Ray may be imported already
    if not address:
        options = {"include_dashboard": False, "_node_ip_address": "127.0.0.1", **options}
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError) as e:
        raise SetupError(
            f"could not join the Ray cluster at {address}: {e}\nRay starts clusters with token authentication: "
            "run with RAY_AUTH_MODE=token and the head node's ~/.ray/auth_token here (or start every node with "
            "RAY_AUTH_MODE=disabled on a private network)"
        ) from e


def _execute_ray(plan: Plan, address: str | None, log: Callable[[str], None], on_done: StepDone) -> None:
    """Each step a Ray task, submitted once every step it needs has finished and ``on_done`` accepted it (as the
    local executor starts it): a failed or refused step's dependents never run, the independent steps do."""
    import ray

    with ray_session(address):
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        most_cpus = max(n.get("CPU", 0.0) for n in nodes)
        most_gpus = max(n.get("GPU", 0.0) for n in nodes)
        for step in plan.todo:  # refuse before anything runs
            if step.resources.gpus > most_gpus:
                raise PlanError(
                    f"step {step.name!r} needs {step.resources.gpus} GPU(s); the Ray cluster's largest node "
                    f"has {most_gpus:g}: add GPU nodes or build the plan without GPUs"
                )
        task = ray.remote(_ray_step)
        finished = {s.name for s in plan.steps if s.done}
        waiting, running, failures = list(plan.todo), {}, []
        count = 0
        while True:
            for step in [s for s in waiting if all(n in finished for n in s.needs)]:
                waiting.remove(step)
                r = step.resources
                ref = task.options(
                    num_cpus=min(r.cpus, most_cpus), num_gpus=r.gpus, max_retries=0, name=step.name
                ).remote(step.fn, dict(step.kwargs), held_tokens())
                running[ref] = step
            if not running:
                break
            [ready], _ = ray.wait(list(running), num_returns=1)
            step = running.pop(ready)
            count += 1
            try:
                start, end = ray.get(ready)
            except ray.exceptions.RayError as e:
                error = f"\n{e}"
            else:
                log(f"[{count}/{len(plan.todo)}] finished {step.name}")
                refused = _accepted(step, start, end, on_done)
                error = None if refused is None else f" {refused}"
            if error is None:
                finished.add(step.name)
            else:
                failures.append(f"step {step.name!r} failed:{error}")
        if failures:
            raise StepFailed("\n".join(failures))
