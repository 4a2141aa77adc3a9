"""docs/defaults.md states every default with its source: the table and the configs agree."""

import json

import pytest
from monai.bundle import ConfigParser

from conftest import ROOT, configs

DOCS = ROOT / "docs" / "defaults.md"
TABLES = {  # table heading in the docs -> the configs whose defaults it states (overlay last)
    "**Pre-training**": ("pretrain.json", "multi_gpu_pretrain.json"),
    "**Fine-tuning on BTCV**": ("train.json",),
}
# every deviation from the reference code is an id with its default and source in the table
DEVIATIONS = {
    "**Pre-training**": {
        "max_grad_norm",
        "swap_source",
        "foreground_k_divisible",
        "rotation_axes",
        "pixdim",
        "proxy_heads",
        "view_rotation",
        "min_crop_fill",
        "min_window_fraction",
    },
    "**Fine-tuning on BTCV**": {"flip_prob", "rotate90_prob", "scale_intensity_prob", "shift_intensity_prob"},
}


def table_rows(heading: str) -> dict:
    """``{id: default}`` of the rows of the table under ``heading`` that name an id (JSON values)."""
    lines = DOCS.read_text().split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| setting"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        ident, default = cells[1], cells[2]
        if ident.startswith("`"):
            rows[ident.strip("`")] = json.loads(default.strip("`"))
    return rows


def test_the_table_parser_reads_ids_and_json_defaults():
    rows = table_rows("**Pre-training**")
    assert rows["learning_rate"] == 4e-4 and rows["rotation_axes"] == [1, 2] and rows["swap_source"] == "unmasked"


@pytest.mark.parametrize("heading", list(TABLES))
def test_every_default_in_the_method_table_is_the_configs(heading):
    parser = ConfigParser()
    parser.read_config(configs(*TABLES[heading]))
    rows = table_rows(heading)
    assert len(rows) >= 20
    wrong = {k: (v, parser.get(k, "<missing>")) for k, v in rows.items() if parser.get(k, "<missing>") != v}
    assert not wrong, f"table default != config value: {wrong}"
    assert DEVIATIONS[heading] <= set(rows), f"deviations without a row: {DEVIATIONS[heading] - set(rows)}"


def test_nothing_is_credited_to_the_paper_that_the_paper_text_read_here_does_not_say():
    """Only the abstract and Fig. 1 caption were available: paper cells quote those or say n/v."""
    for heading in TABLES:
        text = DOCS.read_text().split(heading, 1)[1]
        start = text.index("| setting")
        for line in text[start:].splitlines()[2:]:
            if not line.startswith("|"):
                break
            paper = line.strip("|").split("|")[3].strip()
            assert paper == "n/v" or paper.startswith(("abstract:", "caption:")), line
