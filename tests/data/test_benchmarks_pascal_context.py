"""PASCAL-Context in ASTMT's five-task layout: a fabricated sample in the exact on-disk layout
(JPEGs, PNGs, PASCAL-Part and PASCAL-Context ``.mat`` files) is read into its five named task
instances, flipped jointly, and refused with one sentence naming a missing or bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_lightning.data.benchmarks import PascalContextDataModule
from mtl_lightning.data.benchmarks.pascal_context import label_boundaries, load_mat
from mtl_lightning.data.benchmarks.synthetic import write_pascal_context
from mtl_lightning.shared.errors import DataError

H, W = 30, 40


@pytest.fixture
def pascal(tmp_path: Path) -> Path:
    return write_pascal_context(tmp_path / "PASCAL_MT", {"train": 2, "val": 2}, size=(H, W))


def data(root: Path, **options) -> PascalContextDataModule:
    options = {"image_size": (H, W), "batch_size": 2, "num_workers": 0, **options}
    return PascalContextDataModule(root=str(root), **options)


def test_task_info_names_the_instances_and_their_types(pascal: Path) -> None:
    info = data(pascal).task_info
    assert list(info) == ["semseg", "human_parts", "saliency", "normals", "edges"]
    assert {name: entry.get("type") for name, entry in info.items()} == {
        "semseg": "segmentation", "human_parts": "segmentation", "saliency": "segmentation",
        "normals": None, "edges": None}
    assert [info[n]["num_classes"] for n in ("semseg", "human_parts", "saliency")] == [21, 7, 2]
    assert info["edges"] == {"own_labels": True}


def test_reads_the_five_tasks_as_astmt_does(pascal: Path) -> None:
    dataset = data(pascal).build_dataset("train")
    with_person, without = dataset[0], dataset[1]
    sample_id = dataset.ids[0]
    semseg = np.asarray(Image.open(pascal / "semseg" / "pascal-context" / f"{sample_id}.png"))
    assert np.array_equal(with_person["targets"]["semseg"].numpy(), semseg)
    parts = with_person["targets"]["human_parts"].numpy()
    assert (parts[: H // 4, : W // 2] == 1).all()  # head
    assert (parts[H // 4: H // 2, : W // 2] == 2).all()  # torso
    assert (parts[H // 2:] == 0).all() and with_person["has"]["human_parts"]
    assert not without["has"]["human_parts"]  # no person with parts: unlabelled
    assert bool((without["targets"]["human_parts"] == 255).all())
    raw = np.asarray(Image.open(pascal / "sal_distill" / f"{sample_id}.png")) / 255.0
    assert np.array_equal(with_person["targets"]["saliency"].numpy(), (raw > 0.5).astype(np.uint8))
    labels = load_mat(pascal / "pascal-context" / "trainval" / f"{sample_id}.mat")["LabelMap"]
    assert np.array_equal(with_person["targets"]["edges"].numpy(), label_boundaries(labels))
    normals = with_person["targets"]["normals"]
    valid = normals.norm(dim=0) > 0
    assert bool(valid.any()) and bool((~valid).any())
    assert not bool(valid[torch.from_numpy(labels == 1)].any())  # accordion: not an NYUD class
    everywhere = data(pascal, normals_valid_labels=None).build_dataset("train")[0]
    assert bool((everywhere["targets"]["normals"][:, :-4].norm(dim=0) > 0.99).all())


def test_boundaries_mark_where_the_label_changes() -> None:
    labels = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    assert label_boundaries(labels).tolist() == [[0, 1, 0], [1, 1, 1], [0, 0, 0]]


def test_a_flip_moves_every_task_and_negates_the_normals_x(pascal: Path) -> None:
    options = {"scale_jitter": (1.0, 1.0), "translate": 0.0, "color_jitter": 0.0}
    plain, flipped = data(pascal, hflip=0.0, **options), data(pascal, hflip=1.0, **options)
    reference = plain.build_dataset("train", plain.train_transforms())[0]["targets"]
    out = flipped.build_dataset("train", flipped.train_transforms())[0]["targets"]
    for task in ("semseg", "human_parts", "saliency", "edges"):
        assert torch.equal(out[task], reference[task].flip(-1)), task
    assert torch.allclose(out["normals"][0], -reference["normals"][0].flip(-1))


def test_batches_carry_every_instance_and_partial_human_parts(pascal: Path) -> None:
    module = data(pascal, cache_samples=True)
    module.setup("fit")
    batch = next(iter(module.val_dataloader()))
    assert set(batch["targets"]) == {"semseg", "human_parts", "saliency", "normals", "edges"}
    assert batch["has"]["human_parts"].tolist() == [True, False]
    assert batch["targets"]["normals"].shape == (2, 3, H, W)


def test_missing_and_bad_files_are_named(pascal: Path) -> None:
    sample_id = data(pascal).split_ids("val")[0]
    (pascal / "human_parts" / f"{sample_id}.mat").unlink()
    with pytest.raises(DataError, match=rf"1 of 2 val samples have no human_parts file .*"
                                        rf"{sample_id}\.mat"):
        data(pascal).build_dataset("val")
    train_id = data(pascal).split_ids("train")[1]
    (pascal / "pascal-context" / "trainval" / f"{train_id}.mat").write_text("not a mat file")
    problems = data(pascal).check_files()
    assert any(f"{train_id}.mat' as a .mat file" in p for p in problems), problems
    assert any(f"no human_parts file (first: {pascal}" in p for p in problems), problems
    with pytest.raises(ValueError, match=r"data.tasks names \['parts'\]"):
        data(pascal, tasks=("semseg", "parts"))
