"""What a workflow does only as a command (``python -m monai.bundle run ...``): refuse misspelled ids, and find
the bundle's ``scripts`` package from any working folder given ``--bundle_root``.

Programs that import the configs (MONAI Label's server, notebooks) pass their own ids and own their process,
so nothing here acts unless ``scripts.errors.running_as_command()``.
"""

from __future__ import annotations

import ast
import difflib
import glob
import importlib
import inspect
import os
import pkgutil
import sys
import types

from monai.bundle import ConfigParser

from scripts.atomic_files import BUNDLE_ROOT
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
# keys of config files that document rather than configure
DOCUMENTATION_KEYS = ("_desc_", "sources", "_meta_", "_requires_")
# words MONAI's command line keeps as strings -> what the user meant
LITERAL_WORDS = {"false": "False", "null": "None", "none": "None"}


def bundle_configs() -> list[str]:
    root = os.path.join(BUNDLE_ROOT, "configs")
    return sorted(glob.glob(os.path.join(root, "*.json")) + glob.glob(os.path.join(root, "tasks", "*.json")))


def _is_int(v, low=1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _triple(v, item) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 3 and all(item(x) for x in v)


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


# common ids given on the command line: (check, what is wanted)
ID_RULES = {
    "feature_size": (lambda v: _is_int(v) and v % 12 == 0, "a positive multiple of 12 (Swin UNETR's heads; 12/24/48)"),
    "window_size": (_is_int, "a positive integer (the paper's 7)"),
    "pixdim": (lambda v: _triple(v, _positive), "three positive spacings in mm, e.g. [1.5,1.5,2.0]"),
    "roi_size": (
        lambda v: _triple(v, lambda x: _is_int(x, 32) and x % 32 == 0),
        "three multiples of 32, e.g. [96,96,96] (Swin UNETR halves each side five times)",
    ),
    "num_workers": (lambda v: _is_int(v, 0), "0 or more worker processes"),
    "learning_rate": (_positive, "a positive number"),
    "sw_overlap": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a fraction in [0, 1)"),
    "label_fraction": (lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a fraction in (0, 1]"),
    **{
        name: (_is_int, "a positive integer")
        for name in (
            "batch_size",
            "num_samples",
            "sw_batch_size",
            "max_epochs",
            "max_iterations",
            "val_interval",
            "ckpt_interval",
            "in_channels",
            "out_channels",
        )
    },
}


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


def unknown_nested_ids(argv: list[str]) -> list[str]:
    """One message per nested id (``network_def#feature_sise``) whose parent exists but which does not: MONAI would
    add it silently, or fail deep in instantiation."""
    value = _option_value(argv, "config_file")
    if value is None:
        return []
    parser = ConfigParser()
    parser.read_config(config_files(value))
    problems = []
    for name in _option_names(argv):
        if "#" not in name or name in parser:
            continue
        parent, leaf = name.rsplit("#", 1)
        siblings = parser[parent] if parent in parser else None
        if not isinstance(siblings, dict):  # list indices, or a parent that is itself unknown (reported above)
            continue
        accepted = _arguments(siblings.get("_target_"))
        if accepted is None or leaf in accepted:  # a new keyword argument of the component: legitimate
            continue
        close = difflib.get_close_matches(leaf, sorted(set(siblings) | accepted), n=1, cutoff=0.6)
        problems.append(f"unknown id '{name}'" + (f" (did you mean '{parent}#{close[0]}'?)" if close else ""))
    return problems


def _arguments(target) -> set | None:
    """Keyword arguments the config component ``target`` accepts; None when any are (``**kwargs``), or unknown."""
    if not isinstance(target, str) or target.startswith("$"):
        return set() if target is None else None
    from monai.bundle.config_item import ComponentLocator
    from monai.utils.module import locate

    try:
        module = ComponentLocator().get_component_module_name(target)  # a MONAI name's module, e.g. SwinUNETR
        component = locate(f"{module}.{target}" if isinstance(module, str) else target)
        parameters = inspect.signature(component).parameters.values()
    except Exception:  # a target MONAI resolves some other way: do not guess
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


def overlay_typos(argv: list[str]) -> list[str]:
    """Keys of the ``--config_file`` files that no config of the bundle has (a preset or overlay with a misspelled
    key, which would be added unused while the run takes the default)."""
    value = _option_value(argv, "config_file")
    if value is None:
        return []
    known = set(TRACKING_IDS) | set(DOCUMENTATION_KEYS)
    for path in bundle_configs():
        known |= {key.split("#", 1)[0] for key in ConfigParser.load_config_file(path)}
    problems = []
    for path in config_files(value):
        for key in ConfigParser.load_config_file(path):
            top = key.split("#", 1)[0]
            if top not in known:
                close = difflib.get_close_matches(top, sorted(known), n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                problems.append(f"{path}: unknown id '{top}'{hint}")
    return problems


def literal_problems(argv: list[str]) -> list[str]:
    """``--id false`` / ``--id null`` reach the config as the strings 'false' and 'null' (MONAI's command line
    keeps words it cannot read as Python literals): 'false' counts as true, 'null' is not None."""
    problems = []
    for name in _option_names(argv):
        value = _option_value(argv, name)
        if isinstance(value, str) and value.strip().lower() in LITERAL_WORDS and value.strip() not in ("False", "None"):
            word = LITERAL_WORDS[value.strip().lower()]
            problems.append(f"--{name} {value} is the string {value!r}, not {word}: write --{name} {word}")
    return problems


def value_problems(argv: list[str]) -> list[str]:
    """Type and range of the common ids given on the command line (``ID_RULES``), one message each."""
    problems = []
    for name in _option_names(argv):
        rule = ID_RULES.get(name)
        raw = _option_value(argv, name)
        if rule is None or raw is None or raw.strip().startswith(("$", "@", "%")):
            continue  # an expression or reference: its value is known only when the config resolves it
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        check, wanted = rule
        if not check(value):
            problems.append(f"--{name} {raw}: {wanted}")
    return problems


def check_command_line(argv: list[str] | None = None) -> None:
    """Stop before any work, in one line, when the command line sets an id that no config of the run knows (a typo
    there would otherwise be added as a new, unused id and the run would go on with the default), a nested id
    that does not exist, an overlay key that no bundle config has, ``false`` / ``null`` words that MONAI keeps as
    strings, or a common id out of its type or range."""
    if argv is None:
        if not running_as_command():
            return
        argv = sys.argv[1:]
    problems = unknown_ids(argv)
    if problems:
        raise ConfigError(
            "; ".join(problems) + ": not an id of the given configs (docs/defaults.md lists the ids of each workflow)"
        )
    problems = unknown_nested_ids(argv) + overlay_typos(argv) + literal_problems(argv) + value_problems(argv)
    if problems:
        raise ConfigError("; ".join(problems))
