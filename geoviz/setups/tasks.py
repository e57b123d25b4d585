"""Task sequences for continual learning: two tasks cut from one classification dataset.

Three scenarios (van de Ven & Tolias, "Three scenarios for continual learning"):

- ``class-incremental``: task 1 holds some classes, task 2 the others (default
  0-4, then 5-9); one shared head over all classes, no task label at test time.
- ``task-incremental``: the same split, but each task has its own head: the
  logits of the task's classes only (a slice of the shared output layer), and
  the task label is given at test time.
- ``permuted``: task 2 is task 1 with its pixels shuffled by one fixed, seeded
  permutation; both tasks use all classes and the shared head.

A :class:`Task` holds its data with labels already in its head's coordinates, so
``logits[:, task.head]`` against ``task.y_*`` is its loss in every scenario.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from geoviz.setups.data import Dataset, load_dataset
from geoviz.errors import ConfigError

__all__ = [
    "SCENARIOS",
    "DEFAULT_SPLIT",
    "Task",
    "TaskSequence",
    "parse_split",
    "format_split",
    "make_task_sequence",
    "load_task_sequence",
]

SCENARIOS = ("class-incremental", "task-incremental", "permuted")
DEFAULT_SPLIT = "0-4/5-9"


@dataclass(frozen=True, eq=False)
class Task:
    """One task of a sequence.

    Attributes:
        name: ``task1`` or ``task2``.
        classes: dataset labels present in this task.
        head: output units this task is read from (all of them unless
            task-incremental); labels ``y_*`` are positions in ``head``.
        x_train, y_train, x_test, y_test: the task's data (CPU, float32 / int64).
    """

    name: str
    classes: tuple[int, ...]
    head: tuple[int, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_outputs: int

    @property
    def shared_head(self) -> bool:
        return len(self.head) == self.num_outputs

    def head_index(self, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """Index of the head's logits (for ``logits[:, index]``); None for the whole head."""
        if self.shared_head:
            return None
        return torch.tensor(self.head, dtype=torch.long, device=device)


@dataclass(frozen=True, eq=False)
class TaskSequence:
    """Two tasks in order, with how they were made."""

    name: str
    dataset: str
    scenario: str
    split: str
    seed: int
    tasks: tuple[Task, Task]

    @property
    def first(self) -> Task:
        return self.tasks[0]

    @property
    def second(self) -> Task:
        return self.tasks[1]

    @property
    def start_classes(self) -> tuple[int, ...] | None:
        """Classes the start network is trained on (None: all of them)."""
        return None if self.scenario == "permuted" else self.first.classes


def _parse_group(text: str, num_classes: int) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out += range(int(lo), int(hi) + 1)
        else:
            out.append(int(part))
    if not out:
        raise ValueError
    for c in out:
        if not 0 <= c < num_classes:
            raise ConfigError(f"Class {c} in the split is out of range; labels run from 0 to {num_classes - 1}.")
    return tuple(sorted(set(out)))


def parse_split(split: str | Sequence[Sequence[int]], num_classes: int = 10) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``"0-4/5-9"`` (or ``[[0..4], [5..9]]``) -> the two tasks' classes.

    Raises:
        ConfigError: not two groups, empty or overlapping groups, labels out of range.
    """
    if isinstance(split, str):
        groups = split.split("/")
        if len(groups) != 2:
            raise ConfigError(f"A split is two groups of classes like 0-4/5-9; got '{split}'.")
        try:
            parsed = tuple(_parse_group(g, num_classes) for g in groups)
        except ConfigError:
            raise
        except ValueError:
            raise ConfigError(f"A split is two groups of classes like 0-4/5-9 or 0,2,4/1,3; got '{split}'.") from None
    else:
        parsed = tuple(tuple(sorted({int(c) for c in g})) for g in split)
        if len(parsed) != 2 or not all(parsed):
            raise ConfigError("A split is two non-empty groups of classes.")
        for c in parsed[0] + parsed[1]:
            if not 0 <= c < num_classes:
                raise ConfigError(f"Class {c} in the split is out of range; labels run from 0 to {num_classes - 1}.")
    if set(parsed[0]) & set(parsed[1]):
        raise ConfigError(f"The two tasks of a split must not share classes; both hold {sorted(set(parsed[0]) & set(parsed[1]))}.")
    return parsed[0], parsed[1]


def _ranges(classes: Sequence[int]) -> str:
    parts, start = [], None
    for i, c in enumerate(classes):
        if start is None:
            start = c
        if i + 1 == len(classes) or classes[i + 1] != c + 1:
            parts.append(f"{start}" if start == c else f"{start}-{c}")
            start = None
    return ",".join(parts)


def format_split(first: Sequence[int], second: Sequence[int]) -> str:
    """The inverse of :func:`parse_split`: ``(0..4), (5..9)`` -> ``"0-4/5-9"``."""
    return f"{_ranges(sorted(first))}/{_ranges(sorted(second))}"


def _select(x: torch.Tensor, y: torch.Tensor, classes: tuple[int, ...], head: tuple[int, ...], k: int):
    keep = torch.isin(y, torch.tensor(classes, dtype=y.dtype))
    lookup = torch.full((k,), -1, dtype=torch.long)  # dataset label -> position in head
    lookup[torch.tensor(head)] = torch.arange(len(head))
    return x[keep], lookup[y[keep]]


def _permute(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    return x.reshape(n, -1)[:, perm].reshape(x.shape).contiguous()


def make_task_sequence(
    data: Dataset, scenario: str = "class-incremental", split: str | Sequence[Sequence[int]] = DEFAULT_SPLIT, seed: int = 0
) -> TaskSequence:
    """Cut a two-task sequence out of a dataset (not cached; see :func:`load_task_sequence`).

    Args:
        data: the dataset.
        scenario: one of :data:`SCENARIOS`.
        split: the classes of task 1 and task 2 (split scenarios only).
        seed: seed of the pixel permutation (``permuted``).

    Raises:
        ConfigError: unknown scenario, a bad split, or a split given to ``permuted``.
    """
    if scenario not in SCENARIOS:
        raise ConfigError(f"Unknown scenario '{scenario}'; choose one of {', '.join(SCENARIOS)}.")
    k = data.num_classes
    everything = tuple(range(k))
    if scenario == "permuted":
        if split != DEFAULT_SPLIT:
            raise ConfigError("The permuted scenario uses every class in both tasks; leave the split at its default.")
        pixels = int(torch.tensor(data.input_shape).prod())
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(pixels, generator=gen)
        t1 = Task("task1", everything, everything, data.x_train, data.y_train, data.x_test, data.y_test, k)
        t2 = Task(
            "task2", everything, everything,
            _permute(data.x_train, perm), data.y_train, _permute(data.x_test, perm), data.y_test, k,
        )
        split_text = "all classes, pixels permuted"
    else:
        first, second = parse_split(split, k)
        tasks = []
        for name, classes in (("task1", first), ("task2", second)):
            head = everything if scenario == "class-incremental" else classes
            x_tr, y_tr = _select(data.x_train, data.y_train, classes, head, k)
            x_te, y_te = _select(data.x_test, data.y_test, classes, head, k)
            if x_tr.shape[0] == 0 or x_te.shape[0] == 0:
                raise ConfigError(f"{name} (classes {_ranges(classes)}) has no samples in {data.name}.")
            tasks.append(Task(name, classes, head, x_tr, y_tr, x_te, y_te, k))
        t1, t2 = tasks
        split_text = format_split(first, second)
    name = f"{data.name}/{scenario}/" + (f"seed{seed}" if scenario == "permuted" else split_text)
    return TaskSequence(name, data.name, scenario, split_text, seed, (t1, t2))


@functools.lru_cache(maxsize=4)  # a split or permuted copy of Fashion-MNIST is ~200 MB
def _load_cached(dataset: str, data_dir: str | None, scenario: str, split: str, seed: int) -> TaskSequence:
    return make_task_sequence(load_dataset(dataset, data_dir), scenario, split, seed)


def load_task_sequence(
    dataset: str, scenario: str = "class-incremental", split: str = DEFAULT_SPLIT, seed: int = 0, data_dir: str | None = None
) -> TaskSequence:
    """A named task sequence, cached in-process (treat its tensors as read-only)."""
    if scenario != "permuted":
        seed = 0  # the split scenarios do not use the seed: one cache entry
    return _load_cached(dataset, data_dir, scenario, split, seed)
