"""Seeded splits of an MSD ``dataset.json``: k-fold cross-validation of its ``training`` list, and label
fractions (10 / 25 / 50 / 100 % of the training cases) for few-label fine-tuning.

MSD datalists are used as they are: their ``training`` list holds every labelled case and there is no
``validation`` list. Fold ``f`` of ``k`` validates on the cases at positions ``f, f + k, ...`` of a seeded
permutation of that list and trains on the rest; a fraction keeps the first ``round(fraction * n)``
training cases of another seeded permutation (at least one), so the 10 % cases are among the 25 % cases,
and so on: a few-label curve compares nested subsets, not unrelated draws.

    python -m scripts.tasks.splits --datalist /data/Task09_Spleen/dataset.json --out_dir splits --fold 0

writes ``dataset_fold0_frac10.json`` ... ``dataset_fold0_frac100.json`` (``training``: the fraction of the
fold's training cases; ``validation``: the fold's cases; ``test``: the source's test list), each usable as
``--datalist`` with ``--dataset_dir`` the task's folder. Fine-tuning can also split on the fly:
``--fold 0 --num_folds 5 --label_fraction 0.1 --split_seed 0``, which selects exactly the same cases.
"""

from __future__ import annotations

import json
import os

import numpy as np

from scripts.atomic_files import atomic_path, refuse_bundle_folder, replaced_note
from scripts.errors import ConfigError, InputError, install_error_hook
from scripts.inputs import entry_problems, load_datalist_json

FRACTIONS = (0.1, 0.25, 0.5, 1.0)


class Split:
    """Which entries of a datalist a workflow uses (see the module docstring).

    Args:
        fold: ``None``: the datalist's own lists (``training``, ``validation``); ``0 .. num_folds - 1``:
            cross-validation fold of the ``training`` list (both workflows read only that list).
        num_folds: folds of the cross-validation.
        fraction: share of the training cases to train on, in (0, 1].
        seed: seed of the permutations; the same seed gives the same folds and fractions on any machine.
    """

    def __init__(self, fold: int | None = None, num_folds: int = 5, fraction: float = 1.0, seed: int = 0):
        if fold is not None and not (num_folds >= 2 and 0 <= int(fold) < num_folds):
            raise InputError(f"fold {fold} of num_folds {num_folds}: need num_folds >= 2 and 0 <= fold < num_folds")
        if not 0 < float(fraction) <= 1:
            raise InputError(f"label_fraction {fraction}: expected a share of the training cases in (0, 1]")
        self.fold = None if fold is None else int(fold)
        self.num_folds, self.fraction, self.seed = int(num_folds), float(fraction), int(seed)

    def source_key(self, key: str) -> str:
        """The list of the datalist that ``key`` (``training`` or ``validation``) is drawn from."""
        return "training" if self.fold is not None and key in ("training", "validation") else key

    def select(self, entries: list, key: str) -> list:
        """The entries of list ``key`` this split uses, given the entries of ``source_key(key)``, in list order."""
        if key not in ("training", "validation"):
            return list(entries)
        if self.fold is not None:
            order = np.random.default_rng(self.seed).permutation(len(entries))
            held_out = set(order[self.fold :: self.num_folds].tolist())
            if len(entries) < self.num_folds:
                raise InputError(f"{len(entries)} training cases cannot be split into {self.num_folds} folds")
            entries = [e for i, e in enumerate(entries) if (i in held_out) == (key == "validation")]
        if key == "training" and self.fraction < 1:
            # another stream than the folds', so a fraction does not depend on the fold's own ordering
            order = np.random.default_rng([self.seed, 1]).permutation(len(entries))
            keep = set(order[: max(1, round(self.fraction * len(entries)))].tolist())
            entries = [e for i, e in enumerate(entries) if i in keep]
        return entries


def write_splits(
    datalist: str, out_dir: str, fold: int | None = 0, num_folds: int = 5, fractions=FRACTIONS, seed: int = 0
) -> list[str]:
    """Write one datalist per label fraction (see the module docstring); returns their paths."""
    lists = load_datalist_json(datalist)
    problems = entry_problems(lists["training"], "training", labels=True) if "training" in lists else ["no list"]
    if problems:
        raise InputError(f"datalist {datalist}: no usable 'training' list: " + "; ".join(problems[:5]))
    refuse_bundle_folder(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(datalist))[0]
    names = {f"{stem}{'' if fold is None else f'_fold{fold}'}_frac{fraction * 100:g}.json" for fraction in fractions}
    if len(names) != len(set(fractions)):
        raise ConfigError(f"fractions {list(fractions)}: two of them would write one file name; give distinct values")
    paths = []
    for fraction in fractions:
        split = Split(fold, num_folds, fraction, seed)
        out = {k: v for k, v in lists.items() if k not in ("training", "validation")}
        for key in ("training", "validation"):
            if split.source_key(key) in lists:
                out[key] = split.select(lists[split.source_key(key)], key)
        out["split"] = {"source": os.path.abspath(datalist), "fold": fold, "num_folds": num_folds}
        out["split"].update({"label_fraction": fraction, "seed": seed})
        name = f"{stem}{'' if fold is None else f'_fold{fold}'}_frac{fraction * 100:g}.json"
        paths.append(os.path.join(out_dir, name))
        note = replaced_note(paths[-1])
        with atomic_path(paths[-1]) as tmp, open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        counts = f"{len(out.get('training', []))} training, {len(out.get('validation', []))} validation"
        print(f"{paths[-1]}: {counts}{note}")
    return paths


if __name__ == "__main__":
    import fire

    install_error_hook(command=True)
    fire.Fire(write_splits)
