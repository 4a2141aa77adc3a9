"""Evaluation metrics: HD95 measured in millimetres from the image grid, per-organ CSV tables."""

import csv
from types import SimpleNamespace

import pytest
import torch
from monai.data import MetaTensor

from scripts.metrics import HausdorffDistanceMM, OrganMetricsWriter


def onehot(label: torch.Tensor, classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(label.long(), classes).permute(3, 0, 1, 2).float()


def test_hd95_uses_voxel_spacing_of_the_label_affine():
    truth = torch.zeros(20, 20, 20)
    truth[5:10, 5:10, 5:10] = 1
    pred = torch.roll(truth, shifts=2, dims=2)  # shifted by 2 voxels along the 3rd axis
    affine = torch.diag(torch.tensor([0.8, 0.8, 3.0, 1.0], dtype=torch.float64))
    metric = HausdorffDistanceMM(include_background=False, percentile=95)
    y = MetaTensor(onehot(truth, 2), affine=affine)
    metric([onehot(pred, 2)], [y])
    assert float(metric.aggregate()) == pytest.approx(6.0)  # 2 voxels x 3 mm, not 2


def test_organ_tables_have_named_columns_means_and_blank_for_absent_organs(tmp_path):
    writer = OrganMetricsWriter(str(tmp_path), ["dice"], ["background", "liver", "spleen"])
    writer._files = ["a.nii.gz", "b.nii.gz"]
    engine = SimpleNamespace(
        state=SimpleNamespace(metric_details={"dice": torch.tensor([[0.8, float("nan")], [0.6, 0.4]])})
    )
    means = writer.write(engine)
    rows = list(csv.reader(open(tmp_path / "dice_per_case.csv")))
    assert rows[0] == ["case", "liver", "spleen", "mean"]
    assert rows[1] == ["a.nii.gz", "0.8000", "", "0.8000"]
    assert rows[2] == ["b.nii.gz", "0.6000", "0.4000", "0.5000"]
    assert rows[3] == ["mean", "0.7000", "0.4000", "0.5500"]
    assert means["dice"]["liver"] == pytest.approx(0.7)


def test_infinite_distance_is_written_as_inf_and_left_out_of_means(tmp_path):
    writer = OrganMetricsWriter(str(tmp_path), ["hd"], ["background", "liver", "spleen"])
    writer._files = ["a.nii.gz"]
    engine = SimpleNamespace(state=SimpleNamespace(metric_details={"hd": torch.tensor([[4.0, float("inf")]])}))
    writer.write(engine)
    rows = list(csv.reader(open(tmp_path / "hd_per_case.csv")))
    assert rows[1] == ["a.nii.gz", "4.0000", "inf", "4.0000"]
