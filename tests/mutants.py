"""Mutation runs: how many plausible mistakes do the tests catch?

``--kind code`` (the default): each mutant changes one line of the proxy-task, view, loss or SSL-head
module (the mistakes a re-implementation of the method makes: zeros instead of noise, the unrotated crop
masked, another token, a wrong formula). For each, the repository is copied to a temporary folder, the
mutant applied, and the method's tests run there; a failing run kills the mutant. Equivalent mutants
(same behaviour, other code) are listed with the reason and left out of the score.

``--kind config``: each mutant is one defect of the fine-tuning, evaluation or inference chain applied
to the parsed configs (``tests/config_mutants.py``); the fast tier runs once per mutant (chain tests
first, stopping at the first failure). A mutant is killed when the fast tier fails, and *named* when
that failure's message names the chain and the broken property.

    python tests/mutants.py                       # code mutants, about 10 minutes on 2 cores
    python tests/mutants.py --kind config         # config mutants, about 20 minutes on 2 cores
    python tests/mutants.py --only swap           # those whose name contains "swap"

Not part of the test suite (it is slow); its last figures are in docs/testing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
PROXY, VIEWS, LOSS, NET = (
    "scripts/pretraining/proxy_tasks.py",
    "scripts/pretraining/views.py",
    "scripts/pretraining/loss.py",
    "scripts/network/pretraining.py",
)
DATA_TESTS = ["tests/test_method_spec.py", "tests/test_ssl_parts.py", "tests/test_ssl_steps.py"]
NETWORK_TESTS = ["tests/test_method_spec.py", "tests/test_ssl_parts.py"]
SKIP_NETWORK = "not network and not head and not token and not output_shapes and not encoder_keys"

# (name, file, original text, mutated text, equivalent: None or why the behaviour is the same)
MUTANTS = [
    (
        "noise_zero_fill",
        PROXY,
        "] = (noise - noise.min()) / (noise.max() - noise.min()).clamp_min(1e-8)",
        "] = 0.0",
        None,
    ),
    (
        "noise_not_rescaled",
        PROXY,
        "] = (noise - noise.min()) / (noise.max() - noise.min()).clamp_min(1e-8)",
        "] = noise",
        None,
    ),
    ("noise_uniform", PROXY, "noise = torch.randn(", "noise = torch.rand(", None),
    (
        "noise_constant_half",
        PROXY,
        "] = (noise - noise.min()) / (noise.max() - noise.min()).clamp_min(1e-8)",
        "] = 0.5",
        None,
    ),
    ("fraction_always_max", PROXY, "target = float(torch.rand(())) * max_fraction", "target = max_fraction", None),
    (
        "fraction_doubled",
        PROXY,
        "target = float(torch.rand(())) * max_fraction",
        "target = 2 * float(torch.rand(())) * max_fraction",
        None,
    ),
    (
        "box_side_max_inclusive",
        PROXY,
        "hi = [max(int(max_side * s), low + 1)",
        "hi = [max(int(max_side * s) + 1, low + 1)",
        None,
    ),
    ("box_side_min_one", PROXY, "lo = [max(int(min_side * s), 1) for s in shape]", "lo = [1 for s in shape]", None),
    ("box_side_half_crop", PROXY, "hi = [max(int(max_side * s), low + 1)", "hi = [max(int(0.5 * s), low + 1)", None),
    ("swap_also_from_itself", PROXY, "if other != i:", "if True:", None),
    ("swap_from_itself", PROXY, "source[(other, slice(None), *box)]", "source[(i, slice(None), *box)]", None),
    (
        "swap_source_inverted",
        PROXY,
        'source = x if swap_source == "unmasked" else out',
        'source = out if swap_source == "unmasked" else x',
        None,
    ),
    ("swap_never", PROXY, "if other != i:", "if False:", None),
    ("swap_marked_as_noise", PROXY, "fill[(i, *box)] = 2", "fill[(i, *box)] = 1", None),
    (
        "rotation_three_classes",
        PROXY,
        "k = torch.randint(0, 4, (x.shape[0],))",
        "k = torch.randint(0, 3, (x.shape[0],))",
        None,
    ),
    ("rotation_opposite_direction", PROXY, "xi.rot90(int(ki), dims=dims)", "xi.rot90(-int(ki), dims=dims)", None),
    ("rotation_axes_off_by_one", PROXY, "dims = tuple(a + 1 for a in", "dims = tuple(a for a in", None),
    ("reference_plane_axial", PROXY, "REFERENCE_ROTATION_AXES = (1, 2)", "REFERENCE_ROTATION_AXES = (0, 1)", None),
    (
        "plane_check_off",
        PROXY,
        "    if a != b:\n        raise ConfigError(",
        "    if False:\n        raise ConfigError(",
        None,
    ),
    (
        "clamp_epsilon",
        PROXY,
        ".clamp_min(1e-8)",
        ".clamp_min(1e-12)",
        "a box's noise range is 0 (one voxel: 0 / eps either way) or, for Gaussian draws, far above 1e-8",
    ),
    ("views_mask_unrotated", VIEWS, "m1, _ = mask(x1,", "m1, _ = mask(x,", None),
    ("views_target_unrotated", VIEWS, "torch.cat([x1, x2])", "torch.cat([x, x])", None),
    ("views_same_rotation", VIEWS, "x2, k2 = rotate(x, rotation_axes)", "x2, k2 = x1, k1", None),
    ("views_labels_swapped", VIEWS, "torch.cat([k1, k2])", "torch.cat([k2, k1])", None),
    ("views_unmasked_input", VIEWS, "torch.cat([m1, m2])", "torch.cat([x1, x2])", None),
    ("views_second_mask_of_first", VIEWS, "m2, _ = mask(x2,", "m2, _ = mask(x1,", None),
    ("ntxent_fixed_temperature", LOSS, "/ temperature  # (2B, 2 W B)", "/ 0.5  # (2B, 2 W B)", None),
    ("ntxent_not_normalised", LOSS, "z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)", "z1, z2 = z1, z2", None),
    (
        "ntxent_self_as_candidate",
        LOSS,
        'logits = logits.masked_fill(F.one_hot(own, 2 * total).bool(), float("-inf"))',
        "logits = logits",
        None,
    ),
    (
        "ntxent_wrong_positive",
        LOSS,
        "positive = torch.cat([local + total, local])",
        "positive = torch.cat([local, local + total])",
        None,
    ),
    (
        "ntxent_large_negative_fill",
        LOSS,
        'float("-inf"))',
        "-1e9)",
        "exp(-1e9 / tau) is 0 in float32 as exp(-inf) is: the same softmax",
    ),
    (
        "loss_weights_ignored",
        LOSS,
        "sum(w * t for w, t in zip(self.weights, terms.values()))",
        "sum(terms.values())",
        None,
    ),
    ("loss_l2_reconstruction", LOSS, "self.reconstruction = nn.L1Loss()", "self.reconstruction = nn.MSELoss()", None),
    (
        "loss_label_smoothing",
        LOSS,
        "self.rotation = nn.CrossEntropyLoss()",
        "self.rotation = nn.CrossEntropyLoss(label_smoothing=0.1)",
        None,
    ),
    (
        "tokens_swapped",
        NET,
        "rotation_token, contrastive_token = tokens[:, 0], tokens[:, 1]",
        "rotation_token, contrastive_token = tokens[:, 1], tokens[:, 0]",
        None,
    ),
    (
        "token_last",
        NET,
        "rotation_token, contrastive_token = tokens[:, 0], tokens[:, 1]",
        "rotation_token, contrastive_token = tokens[:, -1], tokens[:, 1]",
        None,
    ),
    ("tokens_always_pooled", NET, 'if self.token_choice == "reference":', "if False:", None),
    (
        "tokens_other_axis_order",
        NET,
        "tokens = features.flatten(2).transpose(1, 2)",
        "tokens = features.transpose(2, 4).flatten(2).transpose(1, 2)",
        None,
    ),
    ("head_no_instance_norm", NET, "nn.InstanceNorm3d(c_out),", "nn.Identity(),", None),
    ("head_nearest_upsampling", NET, 'mode="trilinear"', 'mode="nearest"', None),
    ("head_relu", NET, "nn.LeakyReLU(),", "nn.ReLU(),", None),
    (
        "head_last_conv_3",
        NET,
        "stages.append(nn.Conv3d(channels[-1], in_channels, 1))",
        "stages.append(nn.Conv3d(channels[-1], in_channels, 3, padding=1))",
        None,
    ),
    (
        "head_sigmoid_output",
        NET,
        "stages.append(nn.Conv3d(channels[-1], in_channels, 1))",
        "stages += [nn.Conv3d(channels[-1], in_channels, 1), nn.Sigmoid()]",
        None,
    ),
    (
        "head_channels_halved_late",
        NET,
        "channels = [dim, dim // 2, dim // 4, dim // 8, dim // 16, dim // 16]",
        "channels = [dim, dim // 2, dim // 4, dim // 8, dim // 16, dim // 32]",
        None,
    ),
    (
        "network_contiguous_dropped",
        NET,
        "self.swinViT(x.contiguous())[4]",
        "self.swinViT(x)[4]",
        "the encoder's first layer is a convolution, which reads any memory layout alike",
    ),
]


def run_mutant(name, path, old, new, timeout) -> tuple[str, float]:
    """'killed' or 'survived' (or 'invalid' when the original text is not found once), and seconds."""
    source = (ROOT / path).read_text()
    if source.count(old) != 1:
        return "invalid", 0.0
    with tempfile.TemporaryDirectory(prefix=f"mutant_{name}_") as tmp:
        for part in ("scripts", "tests", "configs", "docs"):
            shutil.copytree(ROOT / part, Path(tmp) / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pytest.ini", tmp)
        (Path(tmp) / path).write_text(source.replace(old, new))
        tests = NETWORK_TESTS if path == NET else DATA_TESTS
        select = [] if path == NET else ["-k", SKIP_NETWORK]
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests, *select]
        start = time.time()
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
            verdict = "killed" if proc.returncode != 0 else "survived"
        except subprocess.TimeoutExpired:
            verdict = "killed"  # a mutant that hangs the tests is caught too
        return verdict, time.time() - start


def run_config_mutant(name: str, expect: tuple[str, str], timeout: int, root: Path) -> tuple[str, float, str]:
    """('killed' / 'killed, unnamed' / 'survived', seconds, the first failure's message): the chain tests
    first, then the rest of the fast tier, each stopping at its first failure."""
    base = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider"]
    env = {**os.environ, "CONFIG_MUTANT": name, "COLUMNS": "1000"}
    start, proc = time.time(), None
    try:
        for selection in (["tests/test_chains.py"], ["tests", "--ignore", "tests/test_chains.py"]):
            proc = subprocess.run(base + selection, cwd=root, capture_output=True, text=True, timeout=timeout, env=env)
            if proc.returncode != 0:
                break
    except subprocess.TimeoutExpired:
        return "killed, unnamed", time.time() - start, "timed out"
    if proc.returncode == 0:
        return "survived", time.time() - start, ""
    failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED tests", "ERROR tests"))]
    message = failed[0] if failed else (proc.stdout + proc.stderr).strip().splitlines()[-1]
    named = all(part in message for part in expect)
    return ("killed" if named else "killed, unnamed"), time.time() - start, message


def main_config(args) -> int:
    from config_mutants import MUTANTS as CONFIG_MUTANTS

    results = []
    # a copy of the repository, without ../shared: the kill rate is the fast tier's on a fresh clone, and
    # edits to the working tree during the run do not reach it
    tmp = tempfile.TemporaryDirectory(prefix="config_mutants_")
    root = Path(tmp.name) / "bundle"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for part in tracked.splitlines():  # the working tree's tracked files, as a fresh clone has them
        (root / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / part, root / part, follow_symlinks=False)
    for name, kind, _, expect in CONFIG_MUTANTS:
        if args.only not in name:
            continue
        verdict, seconds, message = run_config_mutant(name, expect, args.timeout, root)
        results.append({"mutant": name, "kind": kind, "verdict": verdict, "message": message})
        print(f"{verdict:15s} {seconds:6.1f} s  {name} ({kind})\n{'':24s}{message[:300]}", flush=True)
    killed = sum(r["verdict"].startswith("killed") for r in results)
    named = sum(r["verdict"] == "killed" for r in results)
    print(
        f"\nconfig mutation score (fast tier): {killed} of {len(results)} killed "
        f"({killed / max(len(results), 1):.0%}), {named} by a message naming the chain and the property"
    )
    for r in results:
        if r["verdict"] != "killed":
            print(f"{r['verdict']}: {r['mutant']}: {r['message'][:200]}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if named == len(results) else 1  # the bar: every config mutant killed, by a named test


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("code", "config"), default="code")
    parser.add_argument("--only", default="", help="run the mutants whose name contains this")
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args()
    if args.kind == "config":
        return main_config(args)
    results = []
    for name, path, old, new, equivalent in MUTANTS:
        if args.only not in name:
            continue
        verdict, seconds = run_mutant(name, path, old, new, args.timeout)
        results.append({"mutant": name, "file": path, "verdict": verdict, "equivalent": equivalent})
        print(f"{verdict:9s} {seconds:6.1f} s  {name} ({path}){'  [equivalent]' if equivalent else ''}", flush=True)
    scored = [r for r in results if not r["equivalent"] and r["verdict"] != "invalid"]
    killed = sum(r["verdict"] == "killed" for r in scored)
    invalid = [r["mutant"] for r in results if r["verdict"] == "invalid"]
    print(
        f"\nmutation score: {killed} of {len(scored)} non-equivalent mutants killed "
        f"({killed / max(len(scored), 1):.0%})"
    )
    for r in results:
        if r["verdict"] == "survived":
            print(f"survived: {r['mutant']}: {r['equivalent'] or 'NOT equivalent: a test is missing'}")
    if invalid:
        print(f"invalid (original text not found once, code moved?): {invalid}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if killed >= 0.9 * len(scored) and not invalid else 1  # the bar: 90% of non-equivalent mutants


if __name__ == "__main__":
    sys.exit(main())
