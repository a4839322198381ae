"""One torchrun worker: ``python -m harness.training.ddp_worker job.json``.

Rebuilds the typed options from the job, the backend from the plugin registry (by
name, with its validated options: the worker never parses Hydra config), reads its
place in the world from torchrun's environment, and runs the same
:func:`~harness.training.job.train_recipe` as a one-process run. Rank 0 writes the
result; any rank that fails writes its status and one-line reason.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from harness.errors import HarnessError


def world_from_env(distributed: Any) -> Any:
    """This process's place from torchrun's environment, in ``distributed``'s mesh."""
    from harness.training.plan import World

    try:
        return World.of(int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), distributed)
    except KeyError as exc:
        raise HarnessError(f"ddp_worker runs under torchrun, but {exc.args[0]} is not set", "launch it through scenario.distributed.nproc_per_node") from None


def _write(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, default=str))
    os.replace(tmp, path)


def run(job: dict[str, Any]) -> dict[str, Any]:
    from harness.validation import typed
    from harness.data import DatasetOptions
    from harness.models import ModelOptions
    from harness.plugins import get_plugins
    from harness.training.job import train_recipe
    from harness.training.options import TrainingOptions

    options = typed(TrainingOptions, job["training"], "scenario")
    world = world_from_env(options.distributed)
    backend_cls = get_plugins().registry.backend(job["backend"]["name"])
    backend = backend_cls(typed(backend_cls.options_type, job["backend"]["options"], "backend"))

    def report(line: str) -> None:
        if world.is_main:
            print(line, file=sys.stderr, flush=True)

    return train_recipe(
        backend,
        typed(ModelOptions, job["model"], "model"),
        typed(DatasetOptions, job["dataset"], "dataset"),
        options,
        cache_root=job.get("cache_root"),
        world=world,
        tensorboard_dir=job.get("tensorboard_dir"),
        report=report,
        label=f"training (rank 0 of {world.size})",
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text())
    folder = Path(job["result_dir"])
    rank = os.environ.get("RANK", "0")
    try:
        result = run(job)
    except HarnessError as exc:
        _write(folder / f"error-{rank}.json", {"status": exc.status, "reason": f"rank {rank}: {exc.one_line()}"})
        return 1
    except Exception as exc:  # a crash in a worker: keep its one-line reason and the trace
        reason = " ".join(f"rank {rank}: {type(exc).__name__}: {exc}".split())[:500]
        _write(folder / f"error-{rank}.json", {"status": "failed", "reason": reason})
        traceback.print_exc()
        return 1
    if rank == "0":
        _write(folder / "result.json", result)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: the interpreter's teardown would free the retired distributed session,
    # whose gloo process group can deadlock in its destructor (parallel.keep_until_exit).
    os._exit(code)
