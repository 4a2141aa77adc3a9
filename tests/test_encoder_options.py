"""Fine-tuning options: encoder learning-rate factor and freezing the encoder for N iterations."""

import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from torch import nn

from scripts.training.finetuning import FreezeEncoder, parameter_groups

from conftest import ROOT, configs


class EncoderDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.swinViT = nn.Linear(4, 4)
        self.decoder = nn.Linear(4, 1)

    def forward(self, x):
        return self.decoder(self.swinViT(x))


def test_encoder_learning_rate_factor_makes_two_groups():
    net = EncoderDecoder()
    groups = parameter_groups(net, 1e-3, encoder_lr_factor=0.1)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    assert groups[0]["params"] == list(net.swinViT.parameters()) and groups[1]["params"] == list(
        net.decoder.parameters()
    )


def test_the_encoder_stays_fixed_for_the_first_iterations_then_trains():
    torch.manual_seed(0)
    net = EncoderDecoder()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.1)
    snapshots = []

    def step(engine, batch):
        optimizer.zero_grad()
        net(batch).pow(2).mean().backward()
        optimizer.step()
        snapshots.append((net.swinViT.weight.detach().clone(), net.decoder.weight.detach().clone()))

    trainer = Engine(step)
    FreezeEncoder(net, iterations=2).attach(trainer)
    start = (net.swinViT.weight.detach().clone(), net.decoder.weight.detach().clone())
    trainer.run([torch.rand(3, 4)] * 4, max_epochs=1)
    assert torch.equal(snapshots[1][0], start[0])  # encoder untouched, weight decay included, for 2 iterations
    assert not torch.equal(snapshots[0][1], start[1])  # while the decoder trains
    assert not torch.equal(snapshots[3][0], snapshots[1][0])  # then the encoder trains too


def test_train_config_wires_both_options():
    parser = ConfigParser()
    parser.read_config(configs("train.json", "small.json"))
    parser.update({"bundle_root": str(ROOT), "encoder_lr_factor": 0.5, "freeze_encoder_iterations": 3})
    optimizer = parser.get_parsed_content("optimizer")
    assert [g["lr"] for g in optimizer.param_groups] == [0.005, 0.01]
    handler = parser.get_parsed_content("train#freeze_encoder")
    assert isinstance(handler, FreezeEncoder) and handler.iterations == 3
