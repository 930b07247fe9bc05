"""Run a protocol grid (datasets × shots × seeds × trainers) or a list of commands over GPUs or CPU slots.

One job runs per GPU at a time (``CUDA_VISIBLE_DEVICES`` set for it), or ``--jobs N`` at a time on
a CPU-only machine; finished runs are skipped, so the grid can be rerun after a failure or a
timeout, and ``--shard I/N`` splits it over the tasks of a SLURM array (docs/DISTRIBUTED.md)::

    python -m plpp.tools.grid fewshot --datasets caltech101 oxford_pets --shots 1 2 4 8 16 --seeds 1 2 3
    python -m plpp.tools.grid base2new --datasets eurosat dtd --seeds 1 2 3 --trainers PLPP CoOp
    python -m plpp.tools.grid commands jobs.txt --jobs 4

The unit of work of ``fewshot``/``base2new`` is the protocol script for one seed
(``SEEDS=<seed> bash scripts/plpp/main.sh DATASET SHOTS TRAINER [CFG] [KEY VALUE ...]``, or
``base2new.sh``), so the grid makes exactly the runs and folders the scripts make. A job is
finished when the script's dry run has nothing left to run: its runs are finished with the config
the job asks for (``plpp.tools.run_status``). In ``commands`` mode each line is a shell command; a line
running ``train.py`` is finished when the folder after its ``--output-dir`` holds a finished run with
the config that line asks for, another line with ``--output-dir`` when that folder holds
``results.json``, and a line without ``--output-dir`` always runs. A folder holding a run made with
another config (another backbone, other options) is never skipped: the grid stops before starting
anything and names the keys that differ.

Each job's output goes to ``<log-dir>/<job>.log``. The exit code is 0 when every job succeeded or was
skipped, 1 when some failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import itertools
import os
import os.path as osp
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "plpp"
PROTOCOL_SCRIPTS = {"fewshot": "main.sh", "base2new": "base2new.sh"}


class GridError(ValueError):
    """Bad arguments or a grid the protocol scripts refuse."""


@dataclass
class Job:
    """One unit of work: a command, its extra environment, and how to tell it is finished."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    output_dir: str | None = None  # commands mode: finished when <output_dir>/results.json exists
    finished: bool = False


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("_") or "job"


def script_jobs(protocol: str, datasets: list[str], seeds: list[int], trainers: list[str], cfg: str,
                shots: list[int], opts: list[str]) -> list[Job]:
    """The protocol script run for each cell of the grid, one seed per job."""
    script = SCRIPTS / PROTOCOL_SCRIPTS[protocol]
    if not script.is_file():
        raise GridError(f"{script} not found: the {protocol} grid runs the protocol scripts of a source checkout "
                        "(use the 'commands' mode elsewhere)")
    jobs = []
    if protocol == "fewshot":
        if not shots:
            raise GridError("fewshot needs --shots (training images per class, e.g. --shots 1 2 4 8 16)")
        for dataset, k, trainer, seed in itertools.product(datasets, shots, trainers, seeds):
            argv = ["bash", str(script), dataset, str(k), trainer, cfg or "-", *opts]
            jobs.append(Job(f"{dataset}_{trainer}_{k}shots_seed{seed}", argv, {"SEEDS": str(seed)}))
    else:
        if shots:
            raise GridError("base2new always uses 16 shots; drop --shots")
        for dataset, trainer, seed in itertools.product(datasets, trainers, seeds):
            argv = ["bash", str(script), dataset, trainer, cfg or "-", *opts]
            jobs.append(Job(f"base2new_{dataset}_{trainer}_seed{seed}", argv, {"SEEDS": str(seed)}))
    return jobs


def command_jobs(path: str) -> list[Job]:
    """One job per non-empty, non-comment line of ``path`` (``-``: standard input)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise GridError(f"cannot read the command list {path}: {exc}") from None
    jobs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise GridError(f"{path}:{lineno}: cannot parse the command ({exc})") from None
        out = None
        for i, word in enumerate(words):
            if word == "--output-dir" and i + 1 < len(words):
                out = words[i + 1]
            elif word.startswith("--output-dir="):
                out = word.split("=", 1)[1]
        name = f"line{lineno}" + (f"_{_safe_name(out)}" if out else "")
        jobs.append(Job(name[:120], ["bash", "-c", line], output_dir=out))
    return jobs


def train_py_args(command: str) -> tuple[list[str], str] | None:
    """The ``train.py`` arguments of a command line and its mode (``eval`` with ``--eval-only``), or ``None``."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if osp.basename(word) == "train.py":
            args = words[i + 1 :]
            return args, "eval" if "--eval-only" in args else "train"
    return None


def is_finished(job: Job, env: dict[str, str]) -> bool:
    """Whether ``job`` has nothing left to do (see the module docstring); raises :class:`GridError` when
    its folder holds a run made with another config."""
    if job.argv[:2] == ["bash", "-c"]:
        if job.output_dir is None:
            return False
        parsed = train_py_args(job.argv[2])
        if parsed is None:
            return osp.isfile(osp.join(job.output_dir, "results.json"))
        from plpp.tools.run_status import CONFLICT, DONE, run_status

        try:
            status = run_status(job.output_dir, parsed[1], parsed[0])
        except SystemExit:
            raise GridError(f"job {job.name}: train.py refuses its arguments: {job.argv[2]}") from None
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            raise GridError(f"job {job.name}: the requested run is not valid: {exc}") from None
        if status.state == CONFLICT:
            raise GridError(f"job {job.name}: {status.message}")
        return status.state == DONE
    res = subprocess.run(job.argv, env={**env, **job.env, "DRY_RUN": "1"}, capture_output=True, text=True)
    if res.returncode != 0:
        raise GridError(f"job {job.name}: the script refuses it:\n{res.stderr.strip() or res.stdout.strip()}")
    return not any(line.startswith("+ ") for line in res.stdout.splitlines())


def detect_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every GPU torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def make_slots(args: argparse.Namespace) -> list[str | None]:
    """Places to run jobs: ``CUDA_VISIBLE_DEVICES`` values (GPU groups), or ``None`` for CPU slots."""
    gpus = [] if args.cpu else ([g for g in args.gpus.split(",") if g] if args.gpus is not None else detect_gpus())
    if not gpus:
        return [None] * args.jobs
    if len(gpus) < args.gpus_per_job:
        raise GridError(f"--gpus-per-job {args.gpus_per_job} but only {len(gpus)} GPU(s) visible: {','.join(gpus)}")
    groups = [",".join(gpus[i : i + args.gpus_per_job])
              for i in range(0, len(gpus) - args.gpus_per_job + 1, args.gpus_per_job)]
    return [g for g in groups for _ in range(args.per_gpu)]


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise GridError(f"--shard must be I/N (e.g. 0/4 or $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT), "
                        f"got '{text}'") from None
    if count < 1 or not 0 <= index < count:
        raise GridError(f"--shard {text}: need 0 <= I < N")
    return index, count


def _stop(procs: dict) -> None:
    """Stop the running jobs (their whole process groups: the scripts start train.py as a child)."""
    for proc, *_ in procs.values():
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 30
    for proc, *_ in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_jobs(jobs: list[Job], slots: list[str | None], log_dir: str, env: dict[str, str]) -> list[Job]:
    """Run ``jobs`` over ``slots`` (one job per slot at a time); return the failed ones."""
    os.makedirs(log_dir, exist_ok=True)
    pending = list(jobs)
    free = list(range(len(slots)))
    running: dict[int, tuple] = {}  # slot -> (process, job, start time, log file)
    failed: list[Job] = []
    total = len(jobs)
    done = 0

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        while pending or running:
            while pending and free:
                slot = free.pop(0)
                job = pending.pop(0)
                job_env = {**env, **job.env}
                where = "CPU"
                if slots[slot] is not None:
                    job_env["CUDA_VISIBLE_DEVICES"] = slots[slot]
                    where = f"GPU {slots[slot]}"
                log_path = osp.join(log_dir, f"{job.name}.log")
                log = open(log_path, "w", encoding="utf-8")  # closed when the job ends
                log.write("+ " + " ".join(f"{k}={shlex.quote(v)}" for k, v in job.env.items()) +
                          (" " if job.env else "") + shlex.join(job.argv) + "\n")
                log.flush()
                proc = subprocess.Popen(job.argv, env=job_env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                running[slot] = (proc, job, time.time(), log)
                print(f"start {job.name} on {where} (log: {log_path})", flush=True)
            time.sleep(0.1)
            for slot, (proc, job, start, log) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                log.close()
                del running[slot]
                free.append(slot)
                done += 1
                took = time.time() - start
                if rc == 0:
                    print(f"[{done}/{total}] done {job.name} ({took:.0f} s)", flush=True)
                else:
                    failed.append(job)
                    print(f"[{done}/{total}] FAILED {job.name} (exit code {rc}, {took:.0f} s); see "
                          f"{osp.join(log_dir, job.name + '.log')}", flush=True)
    except KeyboardInterrupt:
        print(f"interrupted: stopping {len(running)} running job(s); rerun to continue (finished runs are "
              "skipped, unfinished ones resume)", file=sys.stderr, flush=True)
        _stop(running)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for _, _, _, log in running.values():
            log.close()
    return failed


def get_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--jobs", type=int, default=1, help="jobs at a time without GPUs (default 1)")
    common.add_argument("--gpus", default=None,
                        help="GPU ids to use, e.g. 0,1,3 (default: CUDA_VISIBLE_DEVICES, else all visible)")
    common.add_argument("--per-gpu", type=int, default=1, help="jobs at a time on each GPU (default 1)")
    common.add_argument("--gpus-per-job", type=int, default=1,
                        help="GPUs per job, e.g. 2 with PYTHON='torchrun --standalone --nproc_per_node 2'")
    common.add_argument("--cpu", action="store_true", help="ignore GPUs: run --jobs at a time with none visible")
    common.add_argument("--shard", default=None, help="run only jobs I, I+N, I+2N, ... of the grid (I/N)")
    common.add_argument("--log-dir", default=None, help="per-job logs (default: $OUTPUT/grid_logs, else "
                                                        "output/grid_logs)")
    common.add_argument("--dry-run", action="store_true", help="list the jobs and whether each is finished")

    p = argparse.ArgumentParser(prog="python -m plpp.tools.grid", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    for protocol in PROTOCOL_SCRIPTS:
        sp = sub.add_parser(protocol, parents=[common],
                            help=f"scripts/plpp/{PROTOCOL_SCRIPTS[protocol]} over a grid (one seed per job)")
        sp.add_argument("--datasets", nargs="+", required=True, help="config names in configs/datasets/")
        sp.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
        sp.add_argument("--trainers", nargs="+", default=["PLPP"])
        sp.add_argument("--cfg", default="", help="trainer config name (default: the script's choice)")
        if protocol == "fewshot":
            sp.add_argument("--shots", nargs="+", type=int, default=[])
        sp.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE pairs for train.py, after '--' (e.g. -- OPTIM.MAX_EPOCH 10)")
    sp = sub.add_parser("commands", parents=[common], help="run the shell commands of a file, one per line")
    sp.add_argument("file", help="a file with one command per line ('#' comments), or - for stdin")
    return p


def build_jobs(args: argparse.Namespace) -> list[Job]:
    if args.mode == "commands":
        return command_jobs(args.file)
    opts = list(args.opts or [])
    if opts[:1] == ["--"]:
        opts = opts[1:]
    return script_jobs(args.mode, args.datasets, args.seeds, args.trainers, args.cfg,
                       getattr(args, "shots", []), opts)


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        if args.jobs < 1 or args.per_gpu < 1 or args.gpus_per_job < 1:
            raise GridError("--jobs, --per-gpu and --gpus-per-job must be at least 1")
        index, count = parse_shard(args.shard)
        jobs = build_jobs(args)
        jobs = [job for i, job in enumerate(jobs) if i % count == index]
        env = dict(os.environ)
        for job in jobs:
            job.finished = is_finished(job, env)
        slots = [] if args.dry_run else make_slots(args)
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    todo = [job for job in jobs if not job.finished]
    shard = f" (shard {index}/{count})" if count > 1 else ""
    print(f"{len(jobs)} job(s){shard}: {len(jobs) - len(todo)} finished (skipped), {len(todo)} to run", flush=True)
    for job in jobs:
        if job.finished:
            print(f"skip {job.name}: finished", flush=True)
    if args.dry_run:
        for job in todo:
            print(f"would run {job.name}: " + " ".join(f"{k}={v}" for k, v in job.env.items()) +
                  (" " if job.env else "") + shlex.join(job.argv))
        return 0
    if not todo:
        return 0
    where = f"{len(slots)} slot(s) on GPU(s) {', '.join(dict.fromkeys(s for s in slots if s))}" \
        if slots[0] is not None else f"{len(slots)} CPU slot(s)"
    print(f"running on {where}", flush=True)
    log_dir = args.log_dir or osp.join(os.environ.get("OUTPUT") or "output", "grid_logs")
    try:
        failed = run_jobs(todo, slots, log_dir, env)
    except KeyboardInterrupt:
        return 130
    print(f"{len(todo) - len(failed)} job(s) succeeded, {len(failed)} failed, "
          f"{len(jobs) - len(todo)} skipped", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
