"""The code's shape: scripts/ imports form no circle, no name means two things, configs say each thing once."""

import ast
import importlib
import json
import re
import sys

import pytest

from conftest import ROOT

SCRIPTS = ROOT / "scripts"
CONFIGS = ROOT / "configs"


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in SCRIPTS.rglob("*.py")}


def imported_modules(tree, known) -> set:
    """The ``scripts`` modules a module imports anywhere (function-level imports included)."""
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in known}
    return out


def find_cycle(graph: dict) -> list | None:
    """One import circle of ``graph`` (module -> imported modules), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_scripts_has_no_import_circle():
    trees = modules()
    graph = {name: imported_modules(tree, trees) - {name} for name, tree in trees.items()}
    assert len(graph) > 20  # the walk found the subpackages
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_scripts_is_organised_by_role():
    top = sorted(p.name for p in SCRIPTS.iterdir() if p.suffix == ".py" or p.is_dir() and p.name != "__pycache__")
    assert {"pretraining", "weights", "training", "tools", "network", "tasks", "errors.py", "transforms.py"} <= set(top)
    # shell entry points live in bin/, outside the Python package
    assert not list(SCRIPTS.rglob("*.sh")) and (ROOT / "bin" / "test.sh").is_file()
    # no package may take a standard-library name (scripts/ssl once shadowed ssl for anything run from scripts/)
    assert not set(top) & (sys.stdlib_module_names | {f"{name}.py" for name in sys.stdlib_module_names}), top
    assert len([p for p in top if p.endswith(".py")]) <= 10, top


def test_no_public_name_is_defined_in_two_modules():
    defined = {}
    for name, tree in modules().items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):  # module constants
                names = [t.id for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()]
            else:
                continue
            for n in names:
                if not n.startswith("_"):
                    defined.setdefault(n, []).append(name)
    twice = {n: where for n, where in defined.items() if len(where) > 1}
    assert not twice, f"names defined in several modules: {twice}"


def test_the_error_base_lives_in_its_own_module_and_every_reported_error_derives_from_it():
    from scripts.errors import InputError, ReportedError

    assert ReportedError.__module__ == "scripts.errors" and issubclass(InputError, ReportedError)
    for name, tree in modules().items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                cls = getattr(importlib.import_module(name), node.name)
                assert issubclass(cls, ReportedError), f"{name}.{node.name} does not derive from ReportedError"


def config_files():
    return sorted(CONFIGS.glob("*.json")) + sorted(CONFIGS.glob("tasks/*.json"))


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


@pytest.mark.parametrize("path", config_files(), ids=lambda p: p.name)
def test_every_scripts_name_a_config_uses_exists(path):
    """After a move, a stale dotted path would only fail when that part of the config is reached."""
    for text in strings(json.loads(path.read_text())):
        for dotted in re.findall(r"\bscripts(?:\.[A-Za-z_]\w*)+", text):
            parts = dotted.split(".")
            for cut in range(len(parts), 0, -1):  # longest importable module, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                except ModuleNotFoundError:
                    continue
                for attr in parts[cut:]:
                    assert hasattr(obj, attr), f"{path.name}: {dotted} does not exist"
                    obj = getattr(obj, attr)
                break
            else:
                raise AssertionError(f"{path.name}: {dotted} does not exist")


@pytest.mark.parametrize("path", config_files(), ids=lambda p: p.name)
def test_config_lines_fit_in_120_characters(path):
    if path.name == "metadata.json":
        pytest.skip("the metadata schema wants single-string fields (description, URLs), which JSON cannot wrap")
    long = [f"{i}: {line[:60]}..." for i, line in enumerate(path.read_text().splitlines(), 1) if len(line) > 120]
    assert not long, f"{path.name} lines over 120 characters: {long}"


def test_evaluate_is_a_thin_overlay_without_a_preprocessing_chain_of_its_own():
    text = (CONFIGS / "evaluate.json").read_text()
    evaluate = json.loads(text)
    assert "LoadImaged" not in text and not any("preprocessing" in key for key in evaluate)
    # its one difference from fine-tuning's validation: spatial transforms act on the image only
    assert evaluate["spatial_keys"] == ["image"] and evaluate["spatial_modes"] == ["bilinear"]


def transform_chain(config: dict, path: str) -> list:
    node = config
    for key in path.split("#"):
        node = node[key]
    return node


def test_inference_runs_exactly_the_fine_tuning_chain():
    """MONAI Label loads inference.json alone, so it holds its own copy: it must not drift from train.json's."""
    train = json.loads((CONFIGS / "train.json").read_text())
    inference = json.loads((CONFIGS / "inference.json").read_text())
    assert transform_chain(inference, "preprocessing#transforms") == transform_chain(
        train, "train#deterministic_transforms"
    )
    task_ids = ("in_channels", "modality", "multi_label", "label_regions", "intensity", "foreground")
    for key in ("pixdim", "a_min", "a_max", "roi_size", "feature_size", "out_channels", *task_ids):
        assert inference[key] == train[key], key


def test_pre_training_reads_volumes_as_fine_tuning_does_up_to_the_intensity_window():
    config = json.loads((CONFIGS / "train.json").read_text())
    train = transform_chain(config, "train#deterministic_transforms")
    # the intensity step is a task id (CT window by default); region labels do not touch the image
    train = [config[t[1:]] if isinstance(t, str) else t for t in train if "LabelToRegionsd" not in str(t)]
    pretrain = transform_chain(json.loads((CONFIGS / "pretrain.json").read_text()), "deterministic_transforms")
    targets = [t["_target_"] for t in train[:5]]
    spacing = "scripts.transforms.PathSafeSpacingd"  # Spacingd that leaves MONAI Label's image_path string alone
    assert targets == ["LoadImaged", "EnsureChannelFirstd", "Orientationd", spacing, "ScaleIntensityRanged"]
    assert [t["_target_"] for t in pretrain[:5]] == targets
    for ours, theirs in zip(pretrain[:5], train[:5]):
        same = {k: v for k, v in ours.items() if k not in ("keys", "mode", "_desc_")}
        assert same == {k: v for k, v in theirs.items() if k not in ("keys", "mode", "_desc_")}


def test_repeated_expressions_are_named_once():
    """Checkpoint state, weight loading, the error hook and the datalist reader are ids the workflows reference."""
    for path in config_files():
        text = path.read_text()
        for call in (".full_state", ".load_pretrained", ".install_error_hook", ".checked_datalist", ".usable_images"):
            assert text.count(call) <= 1, f"{path.name} spells out {call} {text.count(call)} times"
        assert '["image", "label"]' not in text.replace('"data_keys": ["image", "label"]', ""), (
            f"{path.name}: the image and label keys are @data_keys"
        )


LIFECYCLE = ("initialize", "run", "finalize")
OVERLAYS = {  # overlay -> the configs it is merged onto
    "multi_gpu_train.json": ("train.json",),
    "multi_gpu_pretrain.json": ("pretrain.json",),
    "multi_gpu_evaluate.json": ("train.json", "evaluate.json"),
    "evaluate.json": ("train.json",),
    "small.json": ("train.json",),
    "small_pretrain.json": ("pretrain.json",),
}


def test_every_config_is_a_workflow_or_an_overlay_named_here():
    workflows = {"train.json", "pretrain.json", "inference.json", "metadata.json"}
    assert {p.name for p in CONFIGS.glob("*.json")} == workflows | set(OVERLAYS)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlays_set_ids_and_flags_and_restate_no_lifecycle_list(overlay):
    """The base workflows own initialize / run / finalize, with the rank tests and a distributed setup that is a
    no-op unless the multi-GPU overlay sets ``distributed``; an overlay that copied a list would drift from it.
    Only evaluation, a workflow of its own, replaces ``run``."""
    config = json.loads((CONFIGS / overlay).read_text())
    allowed = {"run"} if overlay == "evaluate.json" else set()
    restated = {key for key in config if key.split("#")[0] in LIFECYCLE} - allowed
    assert not restated, f"{overlay} restates {sorted(restated)} of {OVERLAYS[overlay]}"
    if overlay.startswith("multi_gpu"):
        assert config["distributed"] is True


@pytest.mark.parametrize("base", ["train.json", "pretrain.json"])
def test_base_workflows_run_the_distributed_steps_as_no_ops_by_default(base):
    config = json.loads((CONFIGS / base).read_text())
    assert config["distributed"] is False and "$scripts.distributed.setup(@distributed)" in config["initialize"]
    assert config["initialize"][:3] == ["@bundle_imports", "@error_hook", "@check_ids"]
    assert "$scripts.distributed.cleanup()" in config["finalize"] and "@rank" in json.dumps(config["run"])


def test_the_self_check_of_the_overlay_rule_reports_a_copied_list(tmp_path, monkeypatch):
    copied = json.loads((CONFIGS / "multi_gpu_train.json").read_text())
    copied["initialize"] = json.loads((CONFIGS / "train.json").read_text())["initialize"]
    (tmp_path / "multi_gpu_train.json").write_text(json.dumps(copied))
    monkeypatch.setattr(sys.modules[__name__], "CONFIGS", tmp_path)
    with pytest.raises(AssertionError, match="restates"):
        test_overlays_set_ids_and_flags_and_restate_no_lifecycle_list("multi_gpu_train.json")


def test_configs_import_only_the_package():
    """``$import scripts`` reaches every module by its full path (scripts.submodule_loader)."""
    for name in ("train.json", "pretrain.json", "inference.json"):
        imports = json.loads((CONFIGS / name).read_text())["imports"]
        assert [i for i in imports if i.startswith("$import scripts")] == ["$import scripts"], name
        assert len(imports) <= 3, imports


def test_the_demo_runs_its_workflows_from_the_bundle_root():
    """The demo moved into scripts/tools/ once and ran the configs from scripts/, where scripts/ssl shadowed ssl."""
    from scripts.tools import demo

    assert demo.ROOT == str(ROOT)
