"""Every command, link and path in the docs works: README.md and docs/*.md are what a newcomer follows.

Commands are read from indented and fenced code blocks (lines ending in ``\\`` joined) and checked without
running them: ``monai.bundle`` commands name existing configs and only ids the merged configs have;
``python -m scripts...`` modules exist and take every ``--flag`` given; shell scripts exist. Relative links
point at existing files and headings. A wrong command fails with the doc file, its line and the problem.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from scripts.cli import RUN_ARGUMENTS, config_files

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CARD = ROOT / "docs" / "README.md"
CARD_MAX_BYTES = 15_500  # the model card is a summary; details live in the topic pages
MAX_LINE = 200  # table rows are exempt: a row cannot be wrapped
COMMAND_STARTS = ("python", "torchrun", "bash", "sbatch")
MISSING = object()


@dataclass(frozen=True)
class Command:
    doc: str  # the doc file, relative to the bundle root
    line: int  # line of the command's first line in that file
    text: str  # the command, continuation lines joined

    def problem(self, message: str) -> str:
        return f"{self.doc}:{self.line}: {message}\n    {self.text}"


# ---------------------------------------------------------------- reading the docs
def code_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of each fenced (```) and indented (4 spaces after a blank line) code block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            start, i = i + 1, i + 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                i += 1
            blocks.append((start + 1, lines[start:i]))
        elif line.startswith("    ") and line.strip() and (i == 0 or not lines[i - 1].strip()):
            start = i
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                i += 1
            blocks.append((start + 1, lines[start:i]))
            continue
        i += 1
    return blocks


def prose(text: str) -> str:
    """The text outside code blocks, line for line (code lines blanked so line numbers stay right)."""
    lines = text.splitlines()
    for start, block in code_blocks(text):
        for k in range(len(block)):
            lines[start - 1 + k] = ""
    return "\n".join(lines)


def _strip_comment(line: str) -> str:
    """The line without a shell comment (`` #`` outside quotes); ``#`` inside a word is an id path."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k]
    return line


def commands(doc: str, text: str) -> list[Command]:
    """Every command line of the code blocks that starts with python, torchrun, bash or sbatch."""
    found = []
    for start, block in code_blocks(text):
        k = 0
        while k < len(block):
            first, parts = start + k, [block[k].strip()]
            while parts[-1].endswith("\\") and k + 1 < len(block):
                parts[-1] = parts[-1][:-1]
                k += 1
                parts.append(block[k].strip())
            k += 1
            joined = " ".join(p.strip() for p in parts).strip()
            words = _strip_comment(joined).split()
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # leading VAR=value assignments
                words.pop(0)
            if words and words[0] in COMMAND_STARTS:
                found.append(Command(doc, first, _strip_comment(joined).strip()))
    return found


def tokens(command: Command) -> list[str]:
    return shlex.split(command.text)


def options(words: list[str]) -> dict[str, str | None]:
    """``--name value`` / ``--name=value`` / ``--flag`` options, in order; words after a bare ``--`` are fire's."""
    out = {}
    for k, word in enumerate(words):
        if word == "--":
            break
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word[2:].partition("=")
            if not eq:
                following = words[k + 1] if k + 1 < len(words) else None
                value = None if following is None or following.startswith("--") else following
            out[name] = value
    return out


# ---------------------------------------------------------------- monai.bundle commands
@functools.lru_cache(maxsize=None)
def merged_config(files: tuple[str, ...]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(ROOT / f) for f in files])
    return parser


def bundle_problems(command: Command, words: list[str]) -> list[str]:
    """Configs exist; every id the command sets is in the merged configs (``run``); routing rules below."""
    at = words.index("monai.bundle")
    subcommand = words[at + 1] if at + 1 < len(words) else ""
    opts = options(words[at + 2 :])
    if "config_file" not in opts or not opts["config_file"]:
        return [command.problem("no --config_file")]
    files = config_files(opts["config_file"])
    missing = [f for f in files if not (ROOT / f).is_file()]
    if opts.get("meta_file") and not (ROOT / opts["meta_file"]).is_file():
        missing.append(opts["meta_file"])
    if missing:
        return [command.problem(f"config file not found: {', '.join(missing)}")]
    if subcommand != "run":  # ckpt_export and the like take their own arguments
        return []
    parser = merged_config(tuple(files))
    problems = [
        command.problem(f"unknown id '{name}': not in {' + '.join(files)}")
        for name in opts
        if name not in RUN_ARGUMENTS and parser.get(name, MISSING) is MISSING
    ]
    for name, value in opts.items():
        if value in ("null", "false"):
            # MONAI's command line keeps both as strings: "null" is not None, "false" is true
            problems.append(command.problem(f"--{name} {value} is the string {value!r}: use '$None' or False"))
    return problems + routing_problems(command, files, opts)


def routing_problems(command: Command, files: list[str], opts: dict) -> list[str]:
    """Mistakes that run without error but do the wrong thing."""
    problems = []
    names = [Path(f).name for f in files]
    if "pretrain.json" in names and "small_pretrain.json" not in names and "train_sources" not in opts:
        # pretrain.json's default sources are the phantoms, at 100,000 full-size iterations
        problems.append(command.problem("pre-training at full size on the default data: give --train_sources"))
    if "val_sources" in opts and "train_sources" not in opts:
        # validation follows the training sources by default; other validation data alone means training the phantoms
        problems.append(command.problem("--val_sources without --train_sources trains on the phantoms"))
    for value in opts.values():
        task = re.search(r"Task(\d\d)_", value or "")
        if task and not any(re.fullmatch(rf"task{task[1]}_\w+\.json", n) for n in names):
            # without its preset a workflow trains and scores BTCV's 14 classes with BTCV's CT window
            problems.append(command.problem(f"MSD Task{task[1]} data without configs/tasks/task{task[1]}_*.json"))
            break
    return problems


# ---------------------------------------------------------------- python -m scripts... commands
def _module_tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def argparse_flags(tree: ast.Module) -> set[str] | None:
    """The ``--flags`` of an argparse command line, or None when the module has no ``add_argument``."""
    flags = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags |= {a.value[2:] for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    return flags if flags else None


def fire_target(tree: ast.Module) -> ast.expr | None:
    """The first argument of the module's ``fire.Fire(...)`` call."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "Fire" and node.args:
            return node.args[0]
    return None


def _assigned(tree: ast.Module, name: str) -> ast.expr | None:
    """The value assigned to ``name`` anywhere in the module (e.g. a command table under ``__main__``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
    return None


def resolve(expr: ast.expr, module, tree: ast.Module):
    """The callable (or ``{name: callable}`` of subcommands) that fire exposes."""
    if isinstance(expr, ast.Dict):
        return {k.value: resolve(v, module, tree) for k, v in zip(expr.keys, expr.values)}
    if isinstance(expr, ast.Name):
        if hasattr(module, expr.id):
            return getattr(module, expr.id)
        value = _assigned(tree, expr.id)
        if value is not None:
            return resolve(value, module, tree)
    raise LookupError(f"cannot tell what fire.Fire({ast.unparse(expr)}) exposes")


def forwarded(function):
    """A ``(*args, **kwargs)`` wrapper without ``functools.wraps`` -> the function it passes them on to."""
    tree = ast.parse(inspect.getsource(function).lstrip())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and any(isinstance(a, ast.Starred) for a in node.args)
            and any(k.arg is None for k in node.keywords)
            and isinstance(node.func, ast.Name)
        ):
            return function.__globals__[node.func.id]
    return None


def parameters(function) -> tuple[set[str], set[str]]:
    """(parameter names, bool parameters) that fire accepts as ``--name`` / ``--noname``."""
    signature = inspect.signature(function)  # follows functools.wraps
    kinds = {p.kind for p in signature.parameters.values()}
    named = [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not named and inspect.Parameter.VAR_KEYWORD in kinds:
        target = forwarded(function)
        if target is not None:
            return parameters(target)
    names = {p.name for p in named}
    flags = {p.name for p in named if p.annotation in (bool, "bool") or isinstance(p.default, bool)}
    if inspect.Parameter.VAR_KEYWORD in kinds:
        names.add("*")  # takes any keyword: nothing to check
    return names, flags


@functools.lru_cache(maxsize=None)
def accepted_flags(module_name: str, subcommand: str | None) -> tuple[frozenset, frozenset] | str:
    """(flags, bool flags) of ``python -m module_name [subcommand]``, or a message saying why not."""
    path = ROOT / Path(*module_name.split("."))
    path = path / "__main__.py" if path.is_dir() else path.with_suffix(".py")
    if not path.is_file():
        return f"module {module_name} not found ({path.relative_to(ROOT)})"
    tree = _module_tree(path)
    flags = argparse_flags(tree)
    if flags is not None:
        return frozenset(flags), frozenset()
    target = fire_target(tree)
    if target is None:
        return f"module {module_name} has no command line (no fire.Fire or argparse)"
    try:
        exposed = resolve(target, importlib.import_module(module_name), tree)
    except Exception as e:  # an import error is the doc's problem too: the command would fail
        return f"module {module_name}: {type(e).__name__}: {e}"
    if isinstance(exposed, dict):
        if subcommand not in exposed:
            return f"module {module_name}: subcommand {subcommand!r} is not one of {sorted(exposed)}"
        exposed = exposed[subcommand]
    names, bools = parameters(exposed)
    return frozenset(names), frozenset(bools)


def module_problems(command: Command, words: list[str], module_name: str) -> list[str]:
    rest = words[words.index(module_name) + 1 :]
    subcommand = rest[0] if rest and not rest[0].startswith("-") else None
    accepted = accepted_flags(module_name, subcommand)
    if isinstance(accepted, str):
        return [command.problem(accepted)]
    names, bools = accepted
    if "*" in names:
        return []
    problems = []
    for flag in options(rest):
        name = flag.replace("-", "_")
        negated = name[2:] if name.startswith("no") else None
        if name not in names and negated not in bools:
            problems.append(command.problem(f"{module_name} has no flag --{flag} (it takes {sorted(names)})"))
    return problems


def script_problems(command: Command, words: list[str]) -> list[str]:
    """A script run by bash, sbatch or python exists (scripts outside the repository are not checked)."""
    problems = []
    for word in words:
        if word.endswith((".sh", ".py")) and not word.startswith(("../", "/", "-")):
            if not (ROOT / word).is_file():
                problems.append(command.problem(f"script not found: {word}"))
    return problems


def command_problems(command: Command) -> list[str]:
    try:
        words = tokens(command)
    except ValueError as e:
        return [command.problem(f"cannot be parsed as a shell command: {e}")]
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    problems = script_problems(command, words)
    if "monai.bundle" in words:
        problems += bundle_problems(command, words)
    elif words[0] == "python" and len(words) > 2 and words[1] == "-m":
        problems += module_problems(command, words, words[2])
    elif words[0] == "python" and len(words) > 1 and words[1].endswith(".py") and (ROOT / words[1]).is_file():
        flags = argparse_flags(_module_tree(ROOT / words[1])) or set()
        problems += [command.problem(f"{words[1]} has no flag --{f}") for f in options(words[2:]) if f not in flags]
    elif words[0] == "torchrun":
        problems.append(command.problem("torchrun without -m monai.bundle run"))
    if "check_data" in command.text and {"--label_values", "--num_classes"} & set(words) and "--labels" not in words:
        # without --labels a datalist whose entries lack labels passes the label check
        problems.append(command.problem("check_data checks labels only with --labels"))
    return problems


# ---------------------------------------------------------------- links and paths
def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces -> hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset:
    seen, out = {}, set()
    for line in prose(path.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base = slug(match[1])
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def link_problems(doc_path: Path, text: str) -> list[str]:
    """Relative links point at files that exist, and ``#anchor`` at a heading of the target .md file."""
    doc = doc_path.relative_to(ROOT) if doc_path.is_relative_to(ROOT) else doc_path
    problems = []
    for number, line in enumerate(prose(text).splitlines(), 1):
        line = re.sub(r"`[^`]*`", "", line)  # a code span is not a link
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (doc_path.parent / file).resolve() if file else doc_path
            if not path.exists():
                problems.append(f"{doc}:{number}: link to a missing file: {target}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                problems.append(f"{doc}:{number}: link to a missing heading: {target}")
    return problems


REPO_PATH = re.compile(r"(?<![\w./])(?:bin|configs|docs|scripts|tests)/[\w./*<>-]*[\w*>/]")
MODULE = re.compile(r"(?<![\w./])scripts(?:\.\w+)+")


def module_reference_problem(reference: str) -> str | None:
    """``scripts.a.b`` names a module; ``scripts.a.b.Name`` also a name defined in module ``scripts.a.b``."""
    parts = reference.split(".")
    for k in range(len(parts), 0, -1):
        base = ROOT / Path(*parts[:k])
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if path.is_file():
            break
    else:
        return f"no module {reference}"
    if k == len(parts):
        return None
    defined = set()
    for node in _module_tree(path).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
    if base.is_dir():  # a package: its submodules count as names
        defined |= {p.stem for p in base.iterdir()}
    if parts[k] not in defined:
        return f"{'.'.join(parts[:k])} has no {parts[k]}"
    return None


def path_problems(doc_path: Path, text: str, spans_only: bool = True) -> list[str]:
    """Repository paths (``scripts/...``, ``configs/...``) and modules (``scripts.a.b``) named in the text exist."""
    doc = doc_path.relative_to(ROOT) if doc_path.is_relative_to(ROOT) else doc_path
    problems = []
    source = prose(text) if spans_only else text
    for number, line in enumerate(source.splitlines(), 1):
        pieces = re.findall(r"`([^`]*)`", line) if spans_only else [line]
        for piece in pieces:
            for path in REPO_PATH.findall(piece):
                if not any(c in path for c in "*<") and not (ROOT / path).exists():
                    problems.append(f"{doc}:{number}: no such file or folder: {path}")
            for reference in MODULE.findall(piece):
                problem = module_reference_problem(reference)
                if problem:
                    problems.append(f"{doc}:{number}: {problem}")
    return problems


def style_problems(doc_path: Path, text: str) -> list[str]:
    doc = doc_path.relative_to(ROOT) if doc_path.is_relative_to(ROOT) else doc_path
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        if len(line) > MAX_LINE and not line.lstrip().startswith("|"):
            problems.append(f"{doc}:{number}: line of {len(line)} characters (at most {MAX_LINE} outside tables)")
        if re.search(r"\bissues?\s+#?\d+", line, re.IGNORECASE):
            problems.append(f"{doc}:{number}: names an issue number: the docs describe the product, not its history")
        if re.search(r"\b\d+ (?:tests|passed|failed)\b", line):
            problems.append(f"{doc}:{number}: a hand-typed test count (it goes stale)")
    return problems


# ---------------------------------------------------------------- the tests
def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems)


def test_the_docs_are_found():
    assert CARD in DOCS and ROOT / "docs" / "defaults.md" in DOCS and ROOT / "docs" / "tasks.md" in DOCS


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_every_command_in_the_docs_names_existing_files_ids_and_flags(doc):
    problems = [p for command in commands(_name(doc), doc.read_text()) for p in command_problems(command)]
    assert not problems, _report(problems)


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_every_relative_link_points_at_a_file_and_heading(doc):
    problems = link_problems(doc, doc.read_text())
    assert not problems, _report(problems)


@pytest.mark.parametrize("doc", [*DOCS, ROOT / "docs" / "data_license.txt"], ids=_name)
def test_every_repository_path_and_module_named_in_the_docs_exists(doc):
    problems = path_problems(doc, doc.read_text(), spans_only=doc.suffix == ".md")
    assert not problems, _report(problems)


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_lines_stay_short_with_no_issue_numbers_or_test_counts(doc):
    problems = style_problems(doc, doc.read_text())
    assert not problems, _report(problems)


def test_the_model_card_is_short_starts_with_contents_and_cites_in_bibtex():
    text = CARD.read_text()
    assert len(text.encode()) <= CARD_MAX_BYTES, f"docs/README.md: {len(text.encode())} bytes > {CARD_MAX_BYTES}"
    body = [line for line in text.splitlines()[1:] if line.strip()]
    assert text.startswith("# ") and re.match(r"- \[[^\]]+\]\(#[\w-]+\)", body[0]), "no table of contents on top"
    assert "```bibtex" in text, "no BibTeX block"
    for arxiv in ("2111.14791", "2201.01266", "2106.05735"):  # Tang, Hatamizadeh, MSD
        assert arxiv in text.split("```bibtex", 1)[1], f"the BibTeX block lacks arXiv {arxiv}"
    assert "Landman" in text.split("```bibtex", 1)[1], "the BibTeX block lacks BTCV (Landman et al. 2015)"


def test_the_readme_routes_a_newcomer_to_presets_folds_and_monai_label():
    text = (ROOT / "README.md").read_text()
    for needed in ("configs/tasks/", "--fold", "MONAI Label", "bash bin/demo.sh", "bash bin/test.sh", "--labels"):
        assert needed in text, f"README.md does not mention {needed}"


def test_every_id_the_defaults_page_lists_is_a_config_id():
    """docs/defaults.md "Ids" is where an unknown-id error sends the user: each id listed there exists."""
    section = (ROOT / "docs" / "defaults.md").read_text().split("## Ids", 1)[1].split("\n## ", 1)[0]
    lists = [p for p in section.split("\n\n") if p.startswith("**")]  # the bold-labelled id lists
    listed = set(re.findall(r"`([\w#]+)`", "\n".join(lists)))
    assert len(listed) > 50, "docs/defaults.md: the id lists under ## Ids were not found"
    known = set(RUN_ARGUMENTS)
    for path in [*(ROOT / "configs").glob("*.json"), *(ROOT / "configs" / "tasks").glob("*.json")]:
        known |= set(ConfigParser.load_config_file(str(path)))
    assert listed - known == set(), f"docs/defaults.md lists ids no config has: {sorted(listed - known)}"


def test_no_doc_names_an_id_by_its_old_name():
    """Old ids are refused with their new name (scripts.cli.RENAMED_IDS); the docs use the new ones."""
    renamed = importlib.import_module("scripts.cli").RENAMED_IDS
    problems = [
        f"{_name(doc)}:{number}: `{old}` is now `{new}`"
        for doc in DOCS
        for number, line in enumerate(doc.read_text().splitlines(), 1)
        for old, new in renamed.items()
        if f"`{old}`" in line and "is now called" not in line  # the error table quotes the refusal itself
    ]
    assert not problems, _report(problems)


def test_the_data_terms_name_the_msd_licence():
    assert "CC BY-SA 4.0" in (ROOT / "docs" / "data_license.txt").read_text()


# ---------------------------------------------------------------- the checks themselves
FAKE_DOC = """# Fake

Some text with a [good link](README.md#overview), a [bad file](nowhere.md) and a
[bad heading](README.md#no-such-heading).

    python -m monai.bundle run --config_file configs/train.json --dataset_dri /data \\
        --train#trainer#max_epochs 3
    python -m scripts.tools.check_data --datalist d.json --labelz
    python -m monai.bundle run --config_file "['configs/train.json','configs/no_such.json']"
    python -m monai.bundle run --config_file configs/pretrain.json
    python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/Task09_Spleen
    bash bin/no_such.sh
    python -m monai.bundle run --config_file configs/train.json --class_weights null
"""


def test_a_wrong_command_or_link_is_reported_with_file_line_and_problem():
    fake = ROOT / "docs" / "fake.md"  # never written: the checks take the text
    problems = [p for c in commands("docs/fake.md", FAKE_DOC) for p in command_problems(c)]
    problems += link_problems(fake, FAKE_DOC)
    text = "\n".join(problems)
    assert "docs/fake.md:6: unknown id 'dataset_dri'" in text
    assert "unknown id 'train" not in text  # train#trainer#max_epochs: a nested id the config has
    assert "docs/fake.md:8: scripts.tools.check_data has no flag --labelz" in text
    assert "docs/fake.md:9: config file not found: configs/no_such.json" in text
    assert "docs/fake.md:10: pre-training at full size" in text
    assert "docs/fake.md:11: MSD Task09 data without configs/tasks/task09_*.json" in text
    assert "docs/fake.md:12: script not found: bin/no_such.sh" in text
    assert "docs/fake.md:13: --class_weights null is the string 'null'" in text
    assert "docs/fake.md:4: link to a missing heading: README.md#no-such-heading" in text
    assert "docs/fake.md:3: link to a missing file: nowhere.md" in text
    assert "good link" not in text and "README.md#overview" not in text


def test_code_blocks_join_continuations_and_drop_comments():
    text = "x\n\n    bash bin/test.sh -m 'not slow'   # the fast tier\n    python -m a \\\n        --b 1\n\nend\n"
    found = commands("f.md", text)
    assert [(c.line, c.text) for c in found] == [(3, "bash bin/test.sh -m 'not slow'"), (4, "python -m a --b 1")]


def test_anchors_follow_github():
    assert slug("Splits: folds and label fractions") == "splits-folds-and-label-fractions"
    assert slug("GPU (H100)") == "gpu-h100"
    assert slug("Checking a task's data") == "checking-a-tasks-data"
    assert slug("`multi_gpu` overlays") == "multi_gpu-overlays"
