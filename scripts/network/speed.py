"""Speed levers for the Swin networks: fused window attention and optional ``torch.compile``.

MONAI's ``WindowAttention`` computes ``softmax(q k^T * scale + bias + mask) v`` with explicit matrices; its
``use_flash_attention`` flag switches to ``scaled_dot_product_attention`` only without gradients. The SDPA
kernel here is used with gradients too: on CUDA the memory-efficient kernel takes the additive bias (with
its gradient); on CPU PyTorch falls back to its math kernel, which is about as fast as MONAI's own path.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import SwinTransformerBlock, WindowAttention
from torch import nn

from scripts.options import choice

logger = logging.getLogger(__name__)

ATTENTION_KERNELS = ("sdpa", "monai")


class SDPAWindowAttention(WindowAttention):
    """``WindowAttention`` computed with ``torch.nn.functional.scaled_dot_product_attention``, with or without
    gradients. Same parameters and buffers as MONAI's module (weights load both ways); input ``(B*nW, N, C)``,
    mask ``(nW, N, N)`` of 0 / -100 for shifted windows or ``None``; output ``(B*nW, N, C)``."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        index = self.relative_position_index[:n, :n].reshape(-1)  # type: ignore[index]
        bias = self.relative_position_bias_table[index].reshape(n, n, heads).permute(2, 0, 1)
        if mask is None:
            bias = bias.unsqueeze(0)
        else:
            # windows are batch-major: fold (window, head) into the head axis so the per-window mask
            # broadcasts over the batch instead of being copied B times
            nw = mask.shape[0]
            q, k, v = (t.reshape(b // nw, nw * heads, n, c // heads) for t in (q, k, v))
            bias = (bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)).reshape(1, nw * heads, n, n)
        drop = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=drop, scale=self.scale)
        out = out.reshape(b, heads, n, c // heads).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


def use_attention(network: nn.Module, kernel: str = "sdpa") -> nn.Module:
    """Switch every Swin window attention in ``network`` to ``kernel`` in place and log which one runs.

    ``"sdpa"``: :class:`SDPAWindowAttention` in training and inference. ``"monai"``: MONAI's module as is
    (matrix path with gradients; its fused path without them when built with ``use_flash_attention``).
    Parameters are untouched, so checkpoints are the same either way. Returns ``network``.
    """
    choice("attention", kernel, ATTENTION_KERNELS)
    target = SDPAWindowAttention if kernel == "sdpa" else WindowAttention
    modules = [m for m in network.modules() if isinstance(m, WindowAttention)]
    for module in modules:
        module.__class__ = target
    if kernel == "sdpa":
        how = "torch scaled_dot_product_attention with and without gradients"
    elif modules and all(m.use_flash_attention for m in modules):
        how = "MONAI's matrix path with gradients, scaled_dot_product_attention without"
    else:
        how = "MONAI's matrix path"
    logger.info(f"window attention: {kernel} ({how}) in {len(modules)} blocks")
    return network


COMPILE_CHOICES = ("false", "true", "regional")
REGIONAL_GRAPH_LIMIT = 64


def compile_network(network: nn.Module, enabled=False, mode: str | None = None) -> nn.Module:
    """``torch.compile`` in place (``nn.Module.compile`` keeps the parameter names, so checkpoints stay loadable
    without the ``_orig_mod.`` prefix). ``enabled``: false; true (the whole network as one graph); or
    ``"regional"``: each Swin transformer block on its own, so the repeated blocks share compiled code and
    compiling takes a fraction of the whole network's time. Returns ``network``."""
    how = str(enabled).lower() if isinstance(enabled, (bool, str)) else enabled
    choice("compile", how, COMPILE_CHOICES)
    if how == "true":
        network.compile(mode=mode)
        logger.info(f"torch.compile on (mode {mode or 'default'}): the first iterations include compilation")
    elif how == "regional":
        # static shapes: the four stages run the same block code at different sizes, and with dynamic shapes
        # dynamo traced them symbolically for over 10 minutes on a CPU. Static graphs are one per stage, shift
        # and input shape: more than the default limit of 8 graphs per code object once training and validation
        # batches differ, hence the higher limit (beyond it a call silently runs uncompiled)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, REGIONAL_GRAPH_LIMIT)
        blocks = [m for m in network.modules() if isinstance(m, SwinTransformerBlock)]
        for block in blocks:
            block.compile(mode=mode, dynamic=False)
        logger.info(f"torch.compile of {len(blocks)} Swin blocks (regional): the first iterations include compilation")
    return network


def prepare_network(network: nn.Module, device, attention: str = "sdpa", compile=False) -> nn.Module:
    """The configs' ``network``: ``network_def`` with the chosen attention kernel, on ``device`` (a string or
    a ``torch.device``), compiled when asked (``compile``: false, true or ``"regional"``)."""
    network = use_attention(network, attention).to(torch.device(device))
    return compile_network(network, enabled=compile)
