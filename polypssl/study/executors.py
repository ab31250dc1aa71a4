"""Run a plan: here, one step after another (``LocalExecutor``), or as SLURM jobs (``SlurmExecutor``).

Both executors skip steps that are done and hand every other step to a *runner*
``(step, command) -> exit code``; the default runs the command as a subprocess whose output goes
straight to the terminal (or the job log), so each stage's own progress bars stay visible. Tests
inject a trivial runner to check ordering and the submitted dependency graph quickly.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from polypssl.errors import PolypsslError
from polypssl.study.plan import ExecutorSection, Plan, SlurmResources, Step

log = logging.getLogger(__name__)

Runner = Callable[[Step, list[str]], int]


def subprocess_runner(step: Step, command: list[str]) -> int:
    """Run ``command`` with this process's stdout/stderr (progress bars stream through)."""
    sys.stdout.flush()
    sys.stderr.flush()
    return subprocess.run(command, check=False).returncode


def stage_command(
    step: Step,
    num_processes: int = 1,
    accelerate_args: Sequence[str] = (),
    python: str = sys.executable,
    machines: dict[str, Any] | None = None,
) -> list[str]:
    """The command line of ``step``: ``python -m polypssl ...``, or ``accelerate launch`` for a
    training step that runs over several processes (``machines``: num_machines, machine_rank,
    main_process_ip, main_process_port for multi-node jobs)."""
    if not step.distributed or num_processes <= 1:
        return [python, "-m", "polypssl", *step.argv]
    launch = [python, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    for key, value in (machines or {}).items():
        launch += [f"--{key}", str(value)]
    return [*launch, *accelerate_args, "-m", f"polypssl.{step.kind}", *step.argv[1:]]


class StepFailed(PolypsslError):
    """A step exited with an error; its own output above says why."""


def _failed(step: Step, code: int, command: list[str]) -> StepFailed:
    return StepFailed(
        f"step {step.id} failed (exit code {code}); its output is above. Command: {' '.join(command)}. "
        f"Fix the cause and run the study again: finished runs are kept, this one resumes."
    )


class LocalExecutor:
    """Runs the pending steps of a plan one after another on this machine, failing fast."""

    def __init__(
        self, num_processes: int = 1, accelerate_args: Sequence[str] = (), runner: Runner = subprocess_runner
    ) -> None:
        self.num_processes = num_processes
        self.accelerate_args = list(accelerate_args)
        self.runner = runner
        self.executed: list[str] = []

    @classmethod
    def from_config(cls, section: ExecutorSection, runner: Runner = subprocess_runner) -> LocalExecutor:
        return cls(section.num_processes, section.accelerate_args, runner)

    def execute(self, plan: Plan) -> list[str]:
        """Run every step that is not done, in dependency order; return the ids of the steps run."""
        pending = plan.pending()
        done = len(plan.steps) - len(pending)
        log.info("study %s: %d steps, %d done, %d to run", plan.study.name, len(plan.steps), done, len(pending))
        start = time.perf_counter()
        for i, step in enumerate(pending, 1):
            command = stage_command(step, self.num_processes, self.accelerate_args)
            print(f"\n=== study {plan.study.name} [{i}/{len(pending)}] {step.id} ({step.state()}) ===", flush=True)
            step_start = time.perf_counter()
            step.prepare()
            code = self.runner(step, command)
            if code != 0:
                raise _failed(step, code, command)
            step.finish()
            self.executed.append(step.id)
            print(f"=== {step.id} done in {time.perf_counter() - step_start:.0f}s ===", flush=True)
        log.info("study %s: complete in %.0fs", plan.study.name, time.perf_counter() - start)
        return list(self.executed)


# ----------------------------------------------------------------------------------------- SLURM
def afterok(job_ids: Sequence[str]) -> str | None:
    """The sbatch dependency string that starts a job once all ``job_ids`` succeeded."""
    return f"afterok:{':'.join(job_ids)}" if job_ids else None


def run_step_job(
    step: Step, resources: SlurmResources, accelerate_args: Sequence[str], port: int, runner: Runner
) -> str:
    """Body of one submitit job: launch the step over the job's nodes and GPUs, then finish it."""
    machines: dict[str, Any] | None = None
    processes = resources.nodes * max(resources.gpus_per_node, 1)
    args = list(accelerate_args)
    if step.distributed and processes > 1:
        import submitit

        env = submitit.JobEnvironment()
        machines = {
            "num_machines": resources.nodes,
            "machine_rank": env.node,
            "main_process_ip": env.hostnames[0],
            "main_process_port": port,
        }
        if resources.gpus_per_node > 0 and "--multi_gpu" not in args:
            args.insert(0, "--multi_gpu")
    if step.state() == "done":  # finished by an earlier submission of the same study
        return step.id
    if machines is None or machines["machine_rank"] == 0:
        step.prepare()
    command = stage_command(step, processes, args, machines=machines)
    code = runner(step, command)
    if code != 0:
        raise RuntimeError(f"step {step.id} failed with exit code {code}: {' '.join(command)}")
    if machines is None or machines["machine_rank"] == 0:
        step.finish()
    return step.id


class SlurmExecutor:
    """One submitit job per pending step, each depending (``afterok``) on its pending dependencies.

    On a real SLURM cluster all jobs are submitted at once and the scheduler orders them. With
    submitit's ``local`` or ``debug`` executor (tests, a workstation) dependencies cannot be
    expressed, so jobs are submitted in dependency order and each waits for its dependencies' jobs.
    ``graph`` records what was submitted: job id -> ids of the jobs it depends on.
    """

    def __init__(
        self,
        section: ExecutorSection,
        folder: str | Path,
        runner: Runner = subprocess_runner,
        executor: Any = None,
    ) -> None:
        self.section = section
        self.folder = Path(folder)
        self.runner = runner
        self.cluster = section.cluster
        if executor is None:
            import submitit

            if self.real_cluster and shutil.which("sbatch") is None:
                raise PolypsslError(
                    "executor.kind=slurm needs SLURM's sbatch on this machine: run the study from a login "
                    "node, or use --executor local (executor.cluster=local tries the submission path here)"
                )

            executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cluster)
        self.executor = executor
        self.jobs: dict[str, Any] = {}  # step id -> job
        self.graph: dict[str, list[str]] = {}  # job id -> dependency job ids
        self.parameters: dict[str, dict[str, Any]] = {}  # step id -> parameters it was submitted with

    @property
    def real_cluster(self) -> bool:
        return self.cluster not in ("local", "debug")

    def job_parameters(self, step: Step, dependency_ids: Sequence[str]) -> dict[str, Any]:
        """submitit parameters of ``step``'s job (SLURM-only keys prefixed ``slurm_``)."""
        res: SlurmResources = getattr(self.section, step.kind)
        nodes = res.nodes if step.distributed else 1
        params: dict[str, Any] = {
            "name": f"polypssl-{step.id.replace('/', '-')}",
            "timeout_min": res.time_min,
            "nodes": nodes if self.real_cluster else 1,
            "tasks_per_node": 1,  # one task per node runs `accelerate launch`, which starts one process per GPU
            "cpus_per_task": res.cpus_per_task,
            "gpus_per_node": res.gpus_per_node if self.real_cluster else 0,
        }
        if res.mem_gb is not None:
            params["mem_gb"] = res.mem_gb
        if self.real_cluster:
            extra = dict(self.section.additional_parameters)
            dependency = afterok(dependency_ids)
            if dependency:
                extra["dependency"] = dependency
                extra.setdefault("kill-on-invalid-dep", "yes")
            for key in ("partition", "account", "qos"):
                value = getattr(self.section, key)
                if value:
                    params[f"slurm_{key}"] = value
            # always set: submitit keeps parameters between submissions
            params["slurm_setup"] = list(self.section.setup)
            params["slurm_additional_parameters"] = extra
        return params

    def execute(self, plan: Plan) -> dict[str, str]:
        """Submit the pending steps; return step id -> job id (local/debug: after the jobs finished)."""
        remaining = plan.pending()
        if self.real_cluster:
            for step in remaining:
                self._submit(step)
            return {step_id: str(job.job_id) for step_id, job in self.jobs.items()}
        # local/debug: a step is submitted once the jobs it depends on have succeeded
        while remaining:
            ready = [s for s in remaining if all(self._finished(d) for d in s.deps)]
            if not ready:
                time.sleep(0.05)
                continue
            for step in ready:
                for dep in step.deps:
                    self._result(dep)
                self._submit(step)
                remaining.remove(step)
        for step_id in self.jobs:
            self._result(step_id)
        return {step_id: str(job.job_id) for step_id, job in self.jobs.items()}

    def _finished(self, step_id: str) -> bool:
        job = self.jobs.get(step_id)
        # debug jobs run in this process when their result is asked for
        return job is None or self.cluster == "debug" or job.done()

    def _result(self, step_id: str) -> None:
        job = self.jobs.get(step_id)
        if job is None:
            return
        try:
            job.result()
        except Exception as err:  # submitit re-raises the job's failure
            raise StepFailed(f"step {step_id} failed in job {job.job_id} (log: {self.folder / str(job.job_id)}): {err}") from err

    def _submit(self, step: Step) -> None:
        dep_ids = [str(self.jobs[d].job_id) for d in step.deps if d in self.jobs]
        res: SlurmResources = getattr(self.section, step.kind)
        if not self.real_cluster:  # one machine, one process per step (trying the submission path)
            res = dataclasses.replace(res, nodes=1, gpus_per_node=0)
        params = self.job_parameters(step, dep_ids)
        self.executor.update_parameters(**params)
        job = self.executor.submit(
            run_step_job, step, res, list(self.section.accelerate_args), self.section.main_process_port, self.runner
        )
        self.jobs[step.id] = job
        self.graph[str(job.job_id)] = dep_ids
        self.parameters[step.id] = params
        after = f" (after {', '.join(dep_ids)})" if dep_ids else ""
        print(f"submitted {step.id} as job {job.job_id}{after}", flush=True)
