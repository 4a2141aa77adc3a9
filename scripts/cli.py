"""What a workflow does only as a command (``python -m monai.bundle run ...``): refuse misspelled ids, and find
the bundle's ``scripts`` package from any working folder given ``--bundle_root``.

Programs that import the configs (MONAI Label's server, notebooks) pass their own ids and own their process,
so nothing here acts unless ``scripts.errors.running_as_command()``.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import pkgutil
import sys
import types

from monai.bundle import ConfigParser

from scripts.errors import ConfigError, running_as_command

# keyword arguments of ``monai.bundle run`` itself, which are not config ids
RUN_ARGUMENTS = (
    "run_id",
    "init_id",
    "final_id",
    "meta_file",
    "config_file",
    "logging_file",
    "tracking",
    "args_file",
    "workflow_name",
)
# ids MONAI's ``--tracking mlflow`` reads from the config when given (monai.bundle.run docstring)
TRACKING_IDS = ("output_dir", "tracking_uri", "experiment_name", "run_name", "save_execute_config")
# ids of earlier versions -> their names now (an old command line is refused, naming the new id)
RENAMED_IDS = {"num_classes": "out_channels", "checkpoint_dir": "state_dir", "batch": "cases"}


def adopt(names: dict) -> None:
    """Make ``scripts`` usable in a config's expressions when the run started outside the bundle root.

    MONAI evaluates ``$import scripts`` at the first expression and, when the package is not on ``sys.path``
    (a run from another folder: MONAI adds the bundle root only later, in ``run``), keeps a placeholder that
    raises "No module named 'scripts'". The first ``initialize`` step (``bundle_imports``) puts ``bundle_root``
    on ``sys.path`` and calls this, which fills the placeholder (the object every later expression sees as
    ``scripts``) with the package's modules. No-op when the import worked.
    """
    placeholder = names.get("scripts")
    if placeholder is None or isinstance(placeholder, types.ModuleType):
        return
    package = importlib.import_module("scripts")
    for part in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"scripts.{part.name}")
    vars(placeholder).update(vars(package))


def _option_names(argv: list[str]) -> list[str]:
    names = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            names.append(token[2:].split("=", 1)[0])
    return names


def _option_value(argv: list[str], name: str):
    for i, token in enumerate(argv):
        if token == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(f"--{name}="):
            return token.split("=", 1)[1]
    return None


def config_files(value: str) -> list[str]:
    """``--config_file`` as MONAI's command line reads it: one path, a Python list literal or comma-separated."""
    value = value.strip()
    if value.startswith("["):
        return [str(v) for v in ast.literal_eval(value)]
    return [v.strip() for v in value.split(",") if v.strip()]


def unknown_ids(argv: list[str]) -> list[str]:
    """One message per top-level id given on the command line ``argv`` that neither the ``--config_file``
    files nor ``monai.bundle run`` know, with the closest known id when there is one."""
    value = _option_value(argv, "config_file")
    if value is None:  # e.g. everything given by --args_file: nothing to compare with
        return []
    known = set(RUN_ARGUMENTS) | set(TRACKING_IDS)
    known |= {key.split("#", 1)[0] for key in ConfigParser.load_config_files(config_files(value))}
    problems = []
    for name in _option_names(argv):
        top = name.split("#", 1)[0]
        if top in known or top.replace("-", "_") in RUN_ARGUMENTS:
            continue
        if top in RENAMED_IDS:
            problems.append(f"id '{top}' is now called '{RENAMED_IDS[top]}'")
            continue
        close = difflib.get_close_matches(top, sorted(known), n=1, cutoff=0.6)
        problems.append(f"unknown id '{top}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return problems


def check_command_line(argv: list[str] | None = None) -> None:
    """Stop before any work when the command line sets an id that no config of the run knows (a typo there
    would otherwise be added as a new, unused id and the run would go on with the default)."""
    if argv is None:
        if not running_as_command():
            return
        argv = sys.argv[1:]
    problems = unknown_ids(argv)
    if problems:
        raise ConfigError(
            "; ".join(problems) + ": not an id of the given configs (docs/defaults.md lists the ids of each workflow)"
        )
