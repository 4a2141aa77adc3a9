"""Convert Swin encoder weights between this bundle's layout and the research ``model_swinvit.pt`` layout.

    python -m scripts.tools.convert_weights to_research models/ssl_encoder.pt models/model_swinvit_ours.pt
    python -m scripts.tools.convert_weights to_bundle models/model_swinvit.pt models/ssl_encoder_from_paper.pt

``to_research`` writes ``{"state_dict": {"module.<encoder key>": ...}}`` with MLPs named ``fc1`` /
``fc2``, which ``SwinUNETR.load_from`` and the research scripts read. ``to_bundle`` writes a flat
``swinViT.*`` state_dict (what ``--pretrained_encoder`` takes). Both record the patch-merging order of the
source (``scripts.weights.record``), which a layout alone does not tell. Converting to research and back is
exact; the research file's final ``norm`` has no counterpart here and is dropped by ``to_bundle``.
"""

from __future__ import annotations

import torch

from scripts.atomic_files import atomic_path
from scripts.weights.formats import ENCODER_PREFIX, detect_format, flat_tensors, read_checkpoint, to_swinunetr_names
from scripts.weights.record import with_record
from scripts.weights.writing import converted_record


def _encoder(src: str) -> dict:
    tensors = flat_tensors(read_checkpoint(src))
    named = to_swinunetr_names(tensors, detect_format(tensors))
    encoder = {k: v for k, v in named.items() if k.startswith(ENCODER_PREFIX)}
    if not encoder:
        raise ValueError(f"{src}: no Swin encoder tensors found")
    return encoder


def _save(state: dict, dst: str) -> None:
    with atomic_path(dst) as tmp:  # never a half-written file at dst
        torch.save(state, tmp)
    print(f"wrote {dst} ({len(state.get('state_dict', state))} tensors)")


def to_research(src: str, dst: str) -> None:
    """Encoder of any supported file -> research ``model_swinvit.pt`` layout (with the record of ``src``'s merging
    order: the research layout alone would be read as pre-1.5 merging)."""
    encoder = _encoder(src)
    research = {}
    for key, value in encoder.items():
        key = key[len(ENCODER_PREFIX) :].replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
        research["module." + key] = value
    _save({"state_dict": with_record(research, converted_record(src, encoder))}, dst)


def to_bundle(src: str, dst: str) -> None:
    """Encoder of any supported file -> flat ``swinViT.*`` state_dict, recording the merging order ``src`` was
    trained with (pre-1.5 for the paper's ``model_swinvit.pt``), which the bundle layout alone cannot tell."""
    encoder = _encoder(src)
    _save(with_record(encoder, converted_record(src, encoder)), dst)
