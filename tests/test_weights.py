"""Encoder hand-over: a pre-trained encoder file loads completely, or the run stops with the names."""

import pytest
import torch
from monai.networks.nets import SwinUNETR

from scripts.weights import load_encoder


def small_net(seed):
    torch.manual_seed(seed)
    return SwinUNETR(in_channels=1, out_channels=14, feature_size=12)


def test_every_encoder_tensor_is_loaded(tmp_path):
    source = small_net(1)
    encoder = {k: v for k, v in source.state_dict().items() if k.startswith("swinViT.")}
    torch.save(encoder, tmp_path / "enc.pt")
    target = small_net(2)
    assert load_encoder(target, str(tmp_path / "enc.pt")) == len(encoder)
    for key, value in target.state_dict().items():
        if key.startswith("swinViT."):
            assert torch.equal(value, encoder[key]), key


def test_wrong_prefix_fails_with_the_missing_names(tmp_path):
    encoder = {k.replace("swinViT.", "module."): v for k, v in small_net(1).state_dict().items() if k.startswith("swinViT.")}
    torch.save(encoder, tmp_path / "enc.pt")
    with pytest.raises(ValueError, match=r"0 of \d+ encoder tensors match; missing: \['swinViT\.layers1"):
        load_encoder(small_net(2), str(tmp_path / "enc.pt"))


def test_wrong_size_fails_with_the_mismatched_names(tmp_path):
    big = SwinUNETR(in_channels=1, out_channels=14, feature_size=24)
    torch.save({k: v for k, v in big.state_dict().items() if k.startswith("swinViT.")}, tmp_path / "enc.pt")
    with pytest.raises(ValueError, match="shape mismatch: \\['swinViT"):
        load_encoder(small_net(2), str(tmp_path / "enc.pt"))
