"""Load a pre-trained Swin encoder into the fine-tuning network, and refuse to load it silently wrong."""

from __future__ import annotations

import logging

import torch
from monai.networks.utils import copy_model_state

logger = logging.getLogger(__name__)

ENCODER_PREFIX = "swinViT."


def load_encoder(network: torch.nn.Module, path: str) -> int:
    """Copy the ``swinViT.*`` tensors of a flat state_dict file into ``network``; returns the count.

    The file is what pre-training writes (``models/ssl_encoder.pt``). Every encoder tensor of the
    network must be found with the right shape, otherwise this raises with the names that did not
    match, rather than fine-tuning from random weights without notice.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (dict of tensors), got {type(state).__name__}")
    target = {k: v for k, v in network.state_dict().items() if k.startswith(ENCODER_PREFIX)}
    source = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    missing = sorted(k for k in target if k not in source)
    mismatched = sorted(k for k in target if k in source and source[k].shape != target[k].shape)
    if missing or mismatched:
        raise ValueError(
            f"{path}: {len(target) - len(missing) - len(mismatched)} of {len(target)} encoder tensors match; "
            f"missing: {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
            f"shape mismatch: {mismatched[:10]}{' ...' if len(mismatched) > 10 else ''}"
        )
    _, updated, _ = copy_model_state(network, source, inplace=True)
    logger.info(f"loaded {len(updated)} of {len(target)} encoder tensors from {path}")
    return len(updated)
