"""UNETR segmentation finetuning: the decoder against monai's UNETR, Dice / HD95 against hand-computed values and
monai, crops, sliding-window inference, and `domainfm finetune task=segmentation` end to end on real labeled MR
volumes (the hippocampus set: labels 1 = anterior, 2 = posterior)."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from domainfm.backbones.loading import load_backbone
from domainfm.backbones.vit import create_vit
from domainfm.backbones.vit3d import VisionTransformer3D, create_vit3d
from domainfm.engine.export import export_backbone
from domainfm.errors import DataError
from domainfm.medical.segmentation import (
    Case,
    SegmentationPatches,
    Segmenter,
    _summary,
    dice_per_class,
    hd95_per_class,
    predict_volume,
)
from domainfm.medical.unetr import UNETR, skip_layers
from safetensors.torch import load_file

from tests.conftest import compose

HIPPO = "medical/msd_task04_hippocampus_subset"


def test_unetr_decoder_is_monais_unetr_wiring():
    from monai.networks.nets import UNETR as MonaiUNETR

    torch.manual_seed(0)
    reference = MonaiUNETR(1, 3, (32, 32, 32), feature_size=8, hidden_size=96, mlp_dim=192, num_heads=4).eval()
    encoder = VisionTransformer3D(img_size=32, patch_size=16, embed_dim=96, depth=12, num_heads=4)
    ours = UNETR(encoder, 3, feature_size=8).eval()
    assert ours.layers == [3, 6, 9] == skip_layers(12, 4)  # monai's hidden_states_out[3], [6], [9]
    names = {"encoder1": "encoder1", "skips.0": "encoder2", "skips.1": "encoder3", "skips.2": "encoder4"}
    names.update({"ups.0": "decoder5", "ups.1": "decoder4", "ups.2": "decoder3", "ups.3": "decoder2", "out": "out"})
    state = reference.state_dict()
    mapped = {}
    for k in ours.state_dict():
        if k.startswith("encoder."):
            continue
        head = next(n for n in names if k.startswith(n + "."))
        mapped[k] = state[names[head] + k[len(head) :]]
    missing, unexpected = ours.load_state_dict(mapped, strict=False)
    assert not unexpected and all(k.startswith("encoder.") for k in missing)

    def as_map(tokens):  # monai's proj_feat
        return tokens.transpose(1, 2).reshape(tokens.shape[0], 96, 2, 2, 2)

    def monai_features(x):  # the same encoder outputs as monai's ViT: only the decoder is compared
        final, hidden = reference.vit(x)
        return as_map(final), [as_map(hidden[i]) for i in (3, 6, 9)]

    ours._features = monai_features
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


def test_skip_norm_makes_the_decoder_blind_to_the_scale_of_the_skip_tokens():
    torch.manual_seed(0)
    encoder = create_vit3d("vit3d_tiny", img_size=32, patch_size=8, depth=3)
    x = torch.randn(2, 1, 32, 32, 32)
    for skip_norm in (True, False):
        net = UNETR(encoder, 3, feature_size=4, skip_norm=skip_norm).eval()
        top, hidden = net._features(x)
        with torch.no_grad():
            plain = net(x)
            net._features = lambda _x, top=top, hidden=hidden: (top, [20.0 * h for h in hidden])  # an MAE's scale
            scaled = net(x)
        assert torch.allclose(plain, scaled, atol=1e-4) == skip_norm
    assert len(UNETR(encoder, 3, feature_size=4, skip_norm=True).skip_norms) == 2  # one per skip (patch 8: 2)


def test_unetr_takes_2d_and_3d_encoders_and_other_patch_sizes():
    vit3d = create_vit3d("vit3d_tiny", img_size=32, patch_size=8, depth=6)
    assert UNETR(vit3d, 3)(torch.randn(1, 1, 32, 48, 32)).shape == (1, 3, 32, 48, 32)
    vit2d = create_vit("vit_tiny_patch16_224", img_size=64, in_chans=1, depth=4)
    model = UNETR(vit2d, 2)
    assert model.layers == [1, 2, 3] and model(torch.randn(2, 1, 64, 96)).shape == (2, 2, 64, 96)
    with pytest.raises(ValueError, match="power-of-two patch size >= 4"):
        UNETR(create_vit3d("vit3d_tiny", img_size=12, patch_size=6, depth=1), 2)


def test_dice_and_hd95_by_hand_and_against_monai():
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    truth = np.zeros((6, 6, 6), np.int64)
    pred = np.zeros_like(truth)
    truth[0, 0, 0], pred[0, 0, 3] = 1, 1  # one voxel each, 3 voxels apart along z
    truth[2:4, 2:4, 2:4] = 2
    pred[2:4, 2:4, 2:3] = 2  # half of class 2
    dice = dice_per_class(pred, truth, 4)
    assert dice[0] == 0.0 and dice[1] == pytest.approx(2 * 4 / (8 + 4)) and np.isnan(dice[2])  # class 3 nowhere
    reference = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(
        one_hot(torch.from_numpy(pred)[None, None], 4), one_hot(torch.from_numpy(truth)[None, None], 4)
    )
    np.testing.assert_allclose(dice, reference[0].numpy(), equal_nan=True)
    hd = hd95_per_class(pred, truth, 4, spacing=(1.0, 1.0, 2.0))
    assert hd[0] == pytest.approx(6.0) and np.isnan(hd[2])  # 3 voxels x 2 mm
    pred[0, 0, 3] = 0
    assert np.isinf(hd95_per_class(pred, truth, 4, (1.0, 1.0, 1.0))[0])  # missed entirely
    summary = _summary(np.array([0.5, 0.7, np.inf, np.nan]), 200, 0)
    assert summary["mean"] == pytest.approx(0.6) and summary["n"] == 2 and summary["not_finite"] == 1
    assert 0.5 <= summary["ci"][0] <= summary["ci"][1] <= 0.7


def _synthetic_case(shape=(20, 24, 16)):
    """Synthetic (no real file has this property): the label is exactly image > 0.5, so crops and augmentations
    keep image and label aligned iff the relation survives (image > 1.5)."""
    rng = np.random.default_rng(0)
    image = rng.random((1, *shape)).astype(np.float32)
    image[0, 5:9, 6:10, 4:8] += 2.0
    label = (image[0] > 1.5).astype(np.int64)
    return Case("synthetic", image, label, (1.0, 1.0, 1.0), np.eye(4))


def test_crops_keep_image_and_label_aligned_and_centre_on_foreground():
    case = _synthetic_case()
    crops = SegmentationPatches([case], (8, 8, 8), samples_per_volume=20, pos_fraction=1.0, flip=0.5, rot90=0.5)
    torch.manual_seed(0)
    for i in range(len(crops)):
        s = crops[i]
        assert s["image"].shape == (1, 8, 8, 8) and s["label"].shape == (8, 8, 8)
        assert torch.equal(s["label"].bool(), s["image"][0] > 1.5) and s["label"].any()
    slices = SegmentationPatches([case], (32, 32), samples_per_volume=3, pos_fraction=1.0, flip=0, rot90=0, dims=2)
    s = slices[0]  # 2D: an axial slice, padded to the roi with the image minimum and label 0
    assert s["image"].shape == (1, 32, 32) and s["label"][20:].sum() == 0 and s["label"].any()
    with pytest.raises(DataError, match=r"segmentation.roi=\[8, 8\] must have 3 sizes"):
        SegmentationPatches([case], (8, 8), dims=3)


def test_sliding_window_prediction_covers_any_volume_size():
    torch.manual_seed(0)
    case = _synthetic_case((20, 40, 12))
    method = Segmenter(create_vit3d("vit3d_tiny", img_size=16, patch_size=8, depth=2), 2, feature_size=4)
    pred = predict_volume(method, case.image, (16, 16, 16))
    assert pred.shape == (20, 40, 12) and set(np.unique(pred)) <= {0, 1}
    flat = Segmenter(create_vit("vit_tiny_patch16_224", img_size=16, patch_size=8, in_chans=1, depth=2), 2, 4)
    assert predict_volume(flat, case.image, (16, 16)).shape == (20, 40, 12)  # slice by slice


@pytest.fixture
def hippo_csv(shared_data, tmp_path):
    root = shared_data / HIPPO
    names = sorted(p.name for p in (root / "imagesTr").glob("*.nii.gz"))[:8]
    splits = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    lines = ["image,label,split,group"] + [
        f"imagesTr/{n},labelsTr/{n},{s},patient{i // 2}" for i, (n, s) in enumerate(zip(names, splits))
    ]
    path = tmp_path / "cases.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, root


def _finetune(overrides):
    from domainfm.commands import finetune

    return finetune.run(compose("finetune", overrides))


def test_finetune_task_segmentation_end_to_end_on_real_volumes(hippo_csv, tmp_path):
    csv_path, root = hippo_csv
    torch.manual_seed(0)
    encoder = create_vit3d("vit3d_tiny", img_size=16, patch_size=8, in_chans=1, depth=2)
    intensity = {"mode": "auto", "windows": ["soft_tissue"], "percentiles": [1.0, 99.0], "nonzero": True}
    pre = {"img_size": 16, "in_chans": 1, "mean": [0.0], "std": [1.0], "modality": ["MR"], "intensity": intensity}
    weights = export_backbone(encoder, tmp_path / "pretrained" / "export", pre)
    run = tmp_path / "seg"
    results = _finetune([
        "task=segmentation", f"data.csv={csv_path}", f"data.root={root}", f"backbone={weights}", f"run_dir={run}",
        "trainer.max_steps=2", "trainer.eval_every=1", "trainer.checkpoint_every=1", "data.num_workers=0",
        "trainer.progress=false", "trainer.tensorboard=false", "segmentation.batch_size=2",
        "segmentation.samples_per_volume=1", "segmentation.feature_size=4", "metrics.bootstrap=50",
        "segmentation.classes=[background,anterior,posterior]",
    ])  # fmt: skip
    scores = results["pretrained"]
    assert scores["cases"] == 2 and set(scores["dice"]) == {"anterior", "posterior"} and scores["monitor"] == "val_dice"
    saved = json.loads((run / "results.json").read_text())
    assert [c["id"] for c in saved["per_case"]] == [row.split(",")[0] for row in csv_path.read_text().splitlines()[7:9]]
    assert "| pretrained |" in (run / "summary.md").read_text() and (run / "report" / "segmentation.png").exists()
    # the reading the weights record is used (percentiles 1-99), and kept in the finetuned export
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["domainfm"]["intensity"]["percentiles"] == [1.0, 99.0] and config["architecture"] == "domainfm_vit3d"
    assert isinstance(load_backbone(run / "export"), VisionTransformer3D)
    # the whole UNETR is exported and reproduces the test predictions written as NIfTI on the image grid
    settings = json.loads((run / "export" / "segmenter.json").read_text())
    assert settings["classes"] == ["background", "anterior", "posterior"] and settings["roi"] == [16, 16, 16]
    method = Segmenter(load_backbone(run / "export"), 3, feature_size=4)
    method.net.load_state_dict(load_file(str(run / "export" / "segmenter.safetensors")))
    from domainfm.medical.intensity import Intensity
    from domainfm.medical.segmentation import load_case

    name = saved["per_case"][0]["id"]
    case = load_case(name, root / name, root / name.replace("images", "labels"),
                     Intensity(**settings["reading"]["intensity"]), "MR", [0.0], [1.0])  # fmt: skip
    written = nib.load(str(run / "predictions" / (name.replace("/", "_")[: -len(".nii.gz")] + ".nii.gz")))
    np.testing.assert_allclose(written.affine, nib.load(str(root / name)).affine, atol=1e-4)
    assert np.array_equal(np.asarray(written.dataobj), predict_volume(method, case.image, (16, 16, 16)))
    splits = (run / "splits.csv").read_text().splitlines()
    assert splits[0] == "image,label,split,group" and splits[1].startswith("imagesTr/") and ",labelsTr/" in splits[1]


def test_a_frozen_encoder_leaves_the_vit_as_it_was_and_trains_the_decoder(hippo_csv, tmp_path):
    from domainfm.engine.optim import build_optimizer
    from domainfm.errors import ConfigError

    torch.manual_seed(0)
    encoder = create_vit3d("vit3d_tiny", img_size=16, patch_size=8, in_chans=1, depth=2)
    method = Segmenter(encoder, 3, feature_size=4, drop_path=0.0, train_blocks=0)
    trainable = {n for n, p in method.net.encoder.named_parameters() if p.requires_grad}
    assert trainable == {"norm.weight", "norm.bias"}  # the final norm learns, as the core's train_blocks
    before = {k: v.clone() for k, v in method.net.state_dict().items()}
    opt = build_optimizer(method, lr=1e-2, weight_decay=0.05)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(1 for p in method.parameters() if p.requires_grad)
    batch = {"image": torch.randn(2, 1, 16, 16, 16), "label": torch.randint(0, 3, (2, 16, 16, 16))}
    method(batch)["loss"].backward()
    opt.step()
    after = method.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(not k.startswith("encoder.") for k in changed)
    assert all(not k.startswith("encoder.") or k.startswith("encoder.norm.") for k in changed)
    # one block: the last block and the final norm learn, the rest of the ViT stays frozen
    last = Segmenter(create_vit3d("vit3d_tiny", img_size=16, patch_size=8, depth=2), 3, 4, train_blocks=1)
    trainable = {n for n, p in last.net.encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("blocks.1.", "norm.")) for n in trainable)
    with pytest.raises(ConfigError, match=r"finetune.train_blocks=3; the backbone has 2 blocks"):
        Segmenter(create_vit3d("vit3d_tiny", img_size=16, patch_size=8, depth=2), 3, 4, train_blocks=3)
    # through the command: the finetuned export of a frozen encoder is the input encoder but for its final norm
    csv_path, root = hippo_csv
    pre = {"img_size": 16, "in_chans": 1, "mean": [0.0], "std": [1.0], "modality": ["MR"]}
    weights = export_backbone(encoder, tmp_path / "pretrained" / "export", pre)
    run = tmp_path / "seg"
    _finetune([
        "task=segmentation", f"data.csv={csv_path}", f"data.root={root}", f"backbone={weights}", f"run_dir={run}",
        "trainer.max_steps=2", "trainer.eval_every=2", "trainer.checkpoint_every=2", "data.num_workers=0",
        "trainer.progress=false", "trainer.tensorboard=false", "segmentation.batch_size=2", "finetune.train_blocks=0",
        "segmentation.samples_per_volume=1", "segmentation.feature_size=4", "metrics.bootstrap=20",
    ])  # fmt: skip
    tuned = load_backbone(run / "export").state_dict()
    same = {k for k, v in encoder.state_dict().items() if torch.equal(v, tuned[k])}
    assert same | {"norm.weight", "norm.bias"} == set(tuned) and "blocks.1.mlp.fc2.weight" in same


def test_a_2d_encoder_segments_real_volumes_slice_by_slice(hippo_csv, tmp_path):
    """A 2D ViT (as medical/dinov2_slices exports) under the 2D UNETR: axial crops in training, every test volume
    predicted slice by slice on its own grid, Dice / HD95 per class, the 2D export kept loadable by timm."""
    from domainfm.backbones.vit import create_vit

    csv_path, root = hippo_csv
    torch.manual_seed(0)
    vit = create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=1, depth=2)
    pre = {"img_size": 32, "in_chans": 1, "mean": [0.0], "std": [1.0], "modality": ["MR"]}
    weights = export_backbone(vit, tmp_path / "slices" / "export", pre)
    run = tmp_path / "seg2d"
    results = _finetune([
        "task=segmentation", f"data.csv={csv_path}", f"data.root={root}", f"backbone={weights}", f"run_dir={run}",
        "trainer.max_steps=2", "trainer.eval_every=2", "trainer.checkpoint_every=2", "data.num_workers=0",
        "trainer.progress=false", "trainer.tensorboard=false", "segmentation.batch_size=4",
        "segmentation.feature_size=4", "metrics.bootstrap=20",
    ])  # fmt: skip
    scores = results["slices"]
    assert scores["cases"] == 2 and set(scores["dice"]) == {"label_1", "label_2"}
    assert json.loads((run / "export" / "segmenter.json").read_text())["roi"] == [32, 32]
    saved = json.loads((run / "results.json").read_text())
    name = saved["per_case"][0]["id"]
    written = nib.load(str(run / "predictions" / (name.replace("/", "_")[: -len(".nii.gz")] + ".nii.gz")))
    image = nib.as_closest_canonical(nib.load(str(root / name)))
    assert written.shape == image.shape and set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    assert json.loads((run / "export" / "config.json").read_text())["pretrained_cfg"]["input_size"] == [1, 32, 32]


def test_segmentation_data_errors_name_the_file_and_the_fix(hippo_csv, shared_data, tmp_path):
    csv_path, root = hippo_csv
    base = ["task=segmentation", f"run_dir={tmp_path / 'r'}", "backbone=unused"]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.nii.gz,0\n")
    with pytest.raises(DataError, match=r"needs columns image,label\[,split\]\[,group\]; found \['path', 'label'\]"):
        _finetune([*base, f"data.csv={bad}"])
    mismatched = tmp_path / "mismatch.csv"
    brain = shared_data / "medical" / "brain1_image.nrrd"
    label = sorted((root / "labelsTr").glob("*.nii.gz"))[0]
    mismatched.write_text(f"image,label\n{brain},{label}\n")
    from domainfm.medical.intensity import Intensity
    from domainfm.medical.segmentation import load_case

    with pytest.raises(DataError, match="label grid .* differs from image .*brain1_image.nrrd.*resample the label"):
        load_case("x", brain, label, Intensity(), "MR", [0.0], [1.0])
