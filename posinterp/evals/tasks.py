"""The paper's zero-shot tasks (BoolQ, PIQA, WinoGrande, RACE) through lm-eval, offline: which tasks have
their data on this machine (a local folder or the hub cache), and their accuracy on a model.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.errors import PosinterpError

PAPER_TASKS = ("boolq", "piqa", "winogrande", "race")


LOCAL_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def _lm_eval_missing() -> PosinterpError | None:
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as err:
        return PosinterpError(f"--tasks needs lm-evaluation-harness ({err.name or err} is missing): "
                              "pip install 'posinterp[lm-eval]' (or pip install lm-eval), or drop --tasks")
    return None


@contextlib.contextmanager
def offline():
    """No network for the datasets/hub libraries inside (their flags are read at import, so set both)."""
    saved = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    patched = []
    for module, attr in (("datasets.config", "HF_DATASETS_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                         ("huggingface_hub.constants", "HF_HUB_OFFLINE")):
        try:
            mod = __import__(module, fromlist=[attr])
        except ImportError:
            continue
        if hasattr(mod, attr):
            patched.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, True)
    try:
        yield
    finally:
        for mod, attr, value in patched:
            setattr(mod, attr, value)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _entry_path(task_manager: Any, task: str) -> Path | None:
    entry = task_manager.task_index.get(task)
    if entry is None:
        return None
    path = getattr(entry, "yaml_path", None) if not isinstance(entry, dict) else entry.get("yaml_path")
    return Path(path) if path and str(path) != "-1" else None


def _read_task_yaml(path: Path) -> dict:
    """A task's YAML as plain values (`!function` tags kept as text), includes merged."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    cfg = yaml.load(path.read_text(), Loader=Loader) or {}  # noqa: S506 - SafeLoader subclass
    includes = cfg.pop("include", None)
    merged: dict = {}
    for inc in includes if isinstance(includes, list) else ([includes] if includes else []):
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        merged.update(_read_task_yaml(inc_path))
    merged.update(cfg)
    return merged


def _eval_split(cfg: dict) -> str | None:
    return cfg.get("test_split") or cfg.get("validation_split")


def _local_files(data_dir: Path | None, task: str, split: str) -> list[Path]:
    if data_dir is None:
        return []
    folder = data_dir / task
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in LOCAL_SUFFIXES
                  and re.match(rf"^{re.escape(split)}([._\-]|$)", p.name))


def _in_hub_cache(cfg: dict, split: str) -> bool:
    """Whether the harness's own hub dataset loads from the local cache, with no network."""
    from datasets import load_dataset

    try:
        with offline():
            load_dataset(cfg["dataset_path"], cfg.get("dataset_name"), split=split,
                         **(cfg.get("dataset_kwargs") or {}))
        return True
    except Exception:
        return False


@dataclass
class TaskPlan:
    """The zero-shot tasks to run: {task: {"name": harness task name, "source", "split"}} and the
    harness TaskManager that knows them (built once: indexing every task YAML takes seconds)."""

    tasks: dict[str, dict]
    manager: Any


def plan_tasks(tasks: list[str], data_dir: Path | None, workdir: Path) -> TaskPlan:
    """Check, before any model runs, that lm-eval is installed and every task's data is here.

    A task with local files runs as `<task>-local`: a YAML in `workdir` that includes the
    harness's own task and points its dataset at the files (nothing else changes: prompt,
    choices, metric are the harness's). Otherwise the harness's hub dataset must be in the local
    cache.
    """
    missing = _lm_eval_missing()
    if missing:
        raise missing
    import yaml
    from lm_eval.tasks import TaskManager

    manager = TaskManager()
    plan: dict[str, dict] = {}
    for task in tasks:
        path = _entry_path(manager, task)
        if path is None:
            raise PosinterpError(f"--tasks {task}: not a single lm-eval task with a YAML config "
                                 f"(the paper's: {','.join(PAPER_TASKS)})")
        cfg = _read_task_yaml(path)
        split = _eval_split(cfg)
        if split is None:
            raise PosinterpError(f"--tasks {task}: the task names no test or validation split")
        files = _local_files(data_dir, task, split)
        hub = f"{cfg.get('dataset_path')}" + (f" ({cfg['dataset_name']})" if cfg.get("dataset_name") else "")
        if files:
            kinds = {LOCAL_SUFFIXES[f.suffix] for f in files}
            if len(kinds) > 1:
                raise PosinterpError(f"--data-dir {data_dir / task}: mix of parquet and json files for split "
                                     f"'{split}'; keep one format")
            name = f"{task}-local"
            override = {
                "include": str(path), "task": name, "tag": [],
                "dataset_path": kinds.pop(), "dataset_name": None,
                "dataset_kwargs": {"data_files": {split: [str(f) for f in files]}},
                "training_split": None, "validation_split": None, "test_split": None, "fewshot_split": None,
            }
            override["test_split" if cfg.get("test_split") else "validation_split"] = split
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / f"{name}.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
            plan[task] = {"name": name, "source": f"{', '.join(str(f) for f in files)} (columns of {hub})",
                          "split": split}
        elif _in_hub_cache(cfg, split):
            plan[task] = {"name": task, "source": f"{hub}, local Hugging Face cache", "split": split}
        else:
            where = f"{data_dir}/{task}/{split}.parquet" if data_dir else f"--data-dir D with D/{task}/{split}.parquet"
            raise PosinterpError(f"--tasks {task}: no data on this machine; provide {where} (or .jsonl) holding "
                                 f"the '{split}' split of {hub} with its original columns, or that dataset in "
                                 "the Hugging Face cache; nothing is downloaded")
    if any(p["name"] != t for t, p in plan.items()):
        manager = TaskManager(include_path=str(workdir))
    return TaskPlan(plan, manager)


def zero_shot(model: Any, tokenizer: Any, task_plan: TaskPlan, *, window: int, limit: int | None,
              batch_size: int, seed: int) -> dict[str, dict]:
    """Run the planned tasks zero-shot on an already loaded model; per task: accuracy, n, per-question scores."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    plan = task_plan.tasks
    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=int(window), batch_size=int(batch_size))
    with offline():
        res = simple_evaluate(model=lm, tasks=[p["name"] for p in plan.values()], num_fewshot=0, limit=limit,
                              log_samples=True, task_manager=task_plan.manager, random_seed=seed,
                              numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    out = {}
    for task, p in plan.items():
        metrics = res["results"][p["name"]]
        samples = sorted(res["samples"][p["name"]], key=lambda s: s["doc_id"])
        metric = "acc"
        scores = [float(s[metric]) for s in samples]
        out[task] = {"metric": metric, "value": float(metrics[f"{metric},none"]), "n": len(scores),
                     "doc_ids": [s["doc_id"] for s in samples], "scores": scores,
                     "harness_stderr": metrics.get(f"{metric}_stderr,none"), "split": p["split"],
                     "source": p["source"]}
    return out
