"""Multilingual CLIP pieces: open_clip checkpoints (HF text tower and built-in text transformer) load into domainfm's
CLIP with the same outputs as open_clip itself; CLIP + DINO self-distillation against DINO's loss; captions with
languages; the byte-level BPE tokenizer; zero-shot prompt ensembling and retrieval recall against brute force.
All weights are random and made here (no download)."""

import json

import numpy as np
import pytest
import torch
from domainfm.backbones.vit import create_vit
from domainfm.data.captions import ImageCaptions, make_tokenizer, train_bpe_tokenizer
from domainfm.errors import DataError
from domainfm.evaluation.zeroshot import class_embeddings, read_prompts, retrieval_scores
from domainfm.methods.base import StepContext
from domainfm.methods.clip import CLIP, CLIPSelfDistill, ClipText
from domainfm.methods.clip_towers import hf_text_tower, open_clip_text_tower
from PIL import Image

from tests.core import reference_math as ref

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("transformers")

HF_TINY = {
    "model_type": "xlm-roberta",
    "vocab_size": 300,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 40,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "layer_norm_eps": 1e-5,
}
VISION = dict(image_size=32, layers=2, width=48, patch_size=8, head_width=16)


def _vit():
    return create_vit("vit_base_patch32_clip_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)


def _inputs():
    g = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, 32, 32, generator=g)
    tokens = torch.randint(3, 300, (3, 12), generator=g)
    tokens[:, 0], tokens[:, 9:] = 0, 1  # <s> ... <pad>
    return images, tokens


def test_published_xlm_roberta_layout_loads_with_open_clips_outputs(tmp_path):
    # the RS-M-CLIP / xlm-roberta-base-ViT-B-32 layout: CustomTextCLIP with an HF XLM-R text tower (mean pooler, MLP
    # projection), OpenAI-style visual keys; saved as open_clip_pytorch_model.bin is
    from open_clip.model import CustomTextCLIP

    (tmp_path / "xlmr").mkdir()
    (tmp_path / "xlmr" / "config.json").write_text(json.dumps(HF_TINY))
    torch.manual_seed(0)
    text_cfg = dict(hf_model_name=str(tmp_path / "xlmr"), hf_model_pretrained=False)
    reference = CustomTextCLIP(embed_dim=24, vision_cfg=VISION, text_cfg=text_cfg).eval()
    with torch.no_grad():
        reference.logit_scale.fill_(3.1)
    torch.save(reference.state_dict(), tmp_path / "open_clip_pytorch_model.bin")

    torch.manual_seed(1)  # other random weights: everything must come from the file
    ours = CLIP(_vit(), hf_text_tower(24, HF_TINY), 24, weights=str(tmp_path / "open_clip_pytorch_model.bin")).eval()
    images, tokens = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), reference.encode_image(images), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.encode_text(tokens), reference.encode_text(tokens), rtol=1e-5, atol=1e-5)
    assert ours.logits.logit_scale.item() == pytest.approx(3.1)


def test_builtin_text_transformer_layout_loads(tmp_path):
    from open_clip.model import CLIP as OpenCLIP

    torch.manual_seed(0)
    text_cfg = dict(context_length=12, vocab_size=300, width=32, heads=2, layers=1)
    reference = OpenCLIP(embed_dim=24, vision_cfg=VISION, text_cfg=text_cfg).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, tmp_path / "ck.pt")
    tower = open_clip_text_tower(embed_dim=24, width=32, heads=2, layers=1, context_length=12, vocab_size=300)
    ours = CLIP(_vit(), tower, 24, weights=str(tmp_path / "ck.pt")).eval()
    images, tokens = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), reference.encode_image(images), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.encode_text(tokens), reference.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_a_checkpoint_of_another_architecture_is_one_error_naming_the_keys(tmp_path):
    from open_clip.model import CustomTextCLIP

    (tmp_path / "xlmr").mkdir()
    (tmp_path / "xlmr" / "config.json").write_text(json.dumps(HF_TINY))
    other = CustomTextCLIP(
        24, dict(VISION, layers=3), dict(hf_model_name=str(tmp_path / "xlmr"), hf_model_pretrained=False)
    )
    torch.save(other.state_dict(), tmp_path / "ck.bin")
    with pytest.raises(ValueError, match=r"image tower does not match.*blocks\.2"):
        CLIP(_vit(), hf_text_tower(24, HF_TINY), 24, weights=str(tmp_path / "ck.bin"))


def _distill(weight=1.0):
    torch.manual_seed(0)
    tower = open_clip_text_tower(embed_dim=16, width=32, heads=2, layers=1, context_length=8, vocab_size=64)
    vit = create_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
    return CLIPSelfDistill(vit, tower, 16, distill_weight=weight, out_dim=64, hidden_dim=32, bottleneck_dim=16).double()


def _crops(B=4):
    g = torch.Generator().manual_seed(5)
    crops = [torch.randn(B, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(2)]
    # locals at the global size: the reference ViT forward has no position-embedding interpolation (tested elsewhere)
    local = [torch.randn(B, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(3)]
    return {"global_crops": crops, "local_crops": local, "text": torch.randint(1, 64, (B, 8), generator=g)}


def test_self_distillation_is_clip_plus_dinos_multicrop_loss():
    method, batch = _distill(weight=0.5), _crops()
    with torch.no_grad():  # a student that differs from its teacher, as after some steps
        for p in method.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
        method.dino_loss.center.normal_()
    center = method.dino_loss.center.clone()
    out = method(batch, StepContext(0, 10))
    g = torch.cat(batch["global_crops"])
    teacher = method.teacher.head(ref.vit_cls(method.teacher.encoder.vit, g))
    student = method.head(
        torch.cat([ref.vit_cls(method.backbone, g), ref.vit_cls(method.backbone, torch.cat(batch["local_crops"]))])
    )
    dino = ref.dino_v1_multicrop_loss(student, teacher, center, 0.1, 0.04)
    image = ref.vit_cls(method.backbone, batch["global_crops"][0]) @ method.image_proj.weight.t()
    clip = ref.clip_loss(image, method.text_tower(batch["text"]), method.logits.logit_scale)
    torch.testing.assert_close(out["dino"], dino.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out["clip"], clip.detach(), rtol=1e-9, atol=0)
    torch.testing.assert_close(out["loss"], clip + 0.5 * dino, rtol=1e-6, atol=1e-9)
    ref_center = ref.dino_center_update(center, [teacher])
    torch.testing.assert_close(
        method.dino_loss.center, ref_center.to(center.dtype), rtol=1e-6, atol=1e-8
    )  # float32 sums


def test_self_distillation_teacher_is_an_ema_of_the_student_and_clip_only_skips_it():
    method = _distill()
    with torch.no_grad():
        for p in method.head.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.teacher.head.parameters()]
    method.after_step(StepContext(0, 10))  # momentum 0.996 at step 0
    for b, t, s in zip(before, method.teacher.head.parameters(), method.head.parameters()):
        torch.testing.assert_close(t, 0.996 * b + 0.004 * s)
    only = _distill(weight=0.0)
    batch = _crops()
    out = only(batch, StepContext(0, 10))
    torch.testing.assert_close(out["loss"], only.clip_terms(batch["global_crops"][0], batch["text"])["loss"])
    assert "dino" not in out


def _folder(tmp_path, names):
    for n in names:
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(tmp_path / n)


def test_captions_by_image_draw_among_the_images_captions_in_the_languages_kept(tmp_path):
    _folder(tmp_path, ["a.png", "b.png"])
    rows = [
        "path,caption,language",
        "a.png,a forest,en",
        "a.png,uma floresta,pt",
        "a.png,ein Wald,de",
        "b.png,a river,en",
    ]
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    per_image = ImageCaptions(tmp_path, tmp_path / "c.csv", per="image", context_length=16)
    assert len(per_image) == 2 and per_image.languages == ["de", "en", "pt"]
    drawn = set()
    for seed in range(30):
        torch.manual_seed(seed)
        meta = per_image[0]["meta"]
        drawn.add((meta["caption"], meta["language"]))
    assert drawn == {("a forest", "en"), ("uma floresta", "pt"), ("ein Wald", "de")}
    kept = ImageCaptions(tmp_path, tmp_path / "c.csv", per="image", languages=["pt", "de"], context_length=16)
    assert len(kept) == 1 and {c.language for c in kept.items[0]} == {"pt", "de"}
    assert len(ImageCaptions(tmp_path, tmp_path / "c.csv", context_length=16)) == 4  # per caption
    with pytest.raises(DataError, match=r"no caption in languages \['fr'\]; it has \['de', 'en', 'pt'\]"):
        ImageCaptions(tmp_path, tmp_path / "c.csv", languages=["fr"])
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [{"image_id": 1, "caption": "x", "language": "es"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    assert ImageCaptions(tmp_path, tmp_path / "c.json")[0]["meta"]["language"] == "es"


def test_byte_level_bpe_has_xlmr_special_ids_and_no_unknown_characters(tmp_path):
    texts = ["a satellite image of a forest", "uma imagem de satélite de floresta", "ein Satellitenbild"] * 20
    folder = train_bpe_tokenizer(texts, tmp_path / "bpe", vocab_size=400)
    tok = make_tokenizer(str(folder), context_length=24)
    ids = tok(["floresta", "卫星图像 ü"])
    assert ids.shape == (2, 24)
    for row in ids:
        n = int((row != 1).sum())
        assert row[0] == 0 and row[n - 1] == 2 and (row[n:] == 1).all()  # <s> ... </s> <pad>...
        assert 3 not in row.tolist()  # byte level: no <unk>
    decoded = tok.tokenizer.decode(ids[1], skip_special_tokens=True)
    assert decoded == "卫星图像 ü"
    with pytest.raises(DataError, match="local tokenizer folder"):
        make_tokenizer("hf-hub:FacebookAI/xlm-roberta-base")


class _Text:  # a stand-in text side: embeddings looked up by prompt
    def __init__(self, table):
        self.table = table

    def encode_texts(self, texts):
        return torch.nn.functional.normalize(torch.stack([self.table[t] for t in texts]).double(), dim=-1)


def test_zeroshot_class_embedding_is_the_renormalised_mean_over_templates_and_languages(tmp_path):
    prompts = {
        "templates": {"en": ["a {}.", "an image of {}."], "pt": ["uma {}."]},
        "classes": {"Forest": {"en": "forest", "pt": "floresta"}, "River": {"en": "river", "pt": "rio"}},
    }
    (tmp_path / "p.json").write_text(json.dumps(prompts, ensure_ascii=False))
    templates, names = read_prompts(tmp_path / "p.json", ["Forest", "River"])
    g = torch.Generator().manual_seed(0)
    texts = ["a forest.", "an image of forest.", "uma floresta.", "a river.", "an image of river.", "uma rio."]
    table = {t: torch.randn(5, generator=g) for t in texts}
    got = class_embeddings(_Text(table), ["Forest", "River"], templates, names)
    for row, group in zip(got, (texts[:3], texts[3:])):
        mean = torch.stack([table[t] / table[t].norm() for t in group]).mean(0)
        torch.testing.assert_close(row, (mean / mean.norm()).double())
    with pytest.raises(DataError, match="class 'Lake' of the data has no names"):
        read_prompts(tmp_path / "p.json", ["Forest", "Lake"])
    default_templates, default_names = read_prompts(None, ["SeaLake", "annual_crop"])
    assert default_names == {"SeaLake": {"en": "sea lake"}, "annual_crop": {"en": "annual crop"}}
    assert list(default_templates) == ["en"]


def test_retrieval_recall_matches_brute_force():
    rng = np.random.default_rng(0)
    n_img, n_txt = 7, 20
    caption_image = np.concatenate([np.arange(n_img), rng.integers(0, n_img, n_txt - n_img)])
    sim = rng.normal(size=(n_img, n_txt))
    got = retrieval_scores(sim, caption_image, ks=(1, 3), n_boot=50)
    for k in (1, 3):
        i2t = np.mean(
            [bool(set(np.argsort(-sim[i])[:k]) & set(np.flatnonzero(caption_image == i))) for i in range(n_img)]
        )
        t2i = np.mean([caption_image[j] in np.argsort(-sim[:, j])[:k] for j in range(n_txt)])
        assert got[f"i2t_R@{k}"]["value"] == pytest.approx(100 * i2t)
        assert got[f"t2i_R@{k}"]["value"] == pytest.approx(100 * t2i)
        lo, hi = got[f"t2i_R@{k}"]["ci"]
        assert lo <= 100 * t2i <= hi
    means = [got[f"{d}_R@{k}"]["value"] for d in ("i2t", "t2i") for k in (1, 3)]
    assert got["mean_recall"] == pytest.approx(np.mean(means))


def test_clip_text_projects_images_like_the_method():
    method = _distill().float().eval()
    text = ClipText(method.text_tower, method.image_proj, method.logits, tokenizer=None)
    x = torch.randn(2, 3, 32, 32)
    cls = method.backbone.forward_features(x)[:, 0]
    torch.testing.assert_close(text.project_images(cls), torch.nn.functional.normalize(method.encode_image(x), dim=-1))


def test_xlm_roberta_base_preset_is_the_hub_config_and_folders_are_read(tmp_path):
    from domainfm.methods.clip_towers import hf_config

    cfg = hf_config("xlm-roberta-base")  # FacebookAI/xlm-roberta-base config.json, built in (no download)
    assert (cfg.model_type, cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == ("xlm-roberta", 250002, 768, 12)
    assert (cfg.max_position_embeddings, cfg.pad_token_id, cfg.type_vocab_size, cfg.layer_norm_eps) == (514, 1, 1, 1e-5)
    (tmp_path / "config.json").write_text(json.dumps(HF_TINY))
    assert hf_config(str(tmp_path)).hidden_size == 32
    with pytest.raises(ValueError, match="not a preset .*xlm-roberta-base.* and no config.json there"):
        hf_config(str(tmp_path / "missing"))


def test_hub_weights_are_read_through_the_hugging_face_cache(tmp_path, monkeypatch):
    # no network: hf_hub_download is replaced by a local cache that holds only the .bin file
    import huggingface_hub
    from domainfm.methods.clip_towers import read_state_dict

    torch.save({"state_dict": {"module.logit_scale": torch.tensor(2.5)}}, tmp_path / "open_clip_pytorch_model.bin")
    asked = []

    def fake_download(repo, name, local_files_only=False):
        asked.append((repo, name))
        if not (tmp_path / name).exists():
            raise FileNotFoundError(name)
        return str(tmp_path / name)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    state = read_state_dict("hf-hub:someone/RS-M-CLIP")
    assert state["logit_scale"].item() == 2.5
    assert asked == [("someone/RS-M-CLIP", f) for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")]
    (tmp_path / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="hf-hub:someone/RS-M-CLIP: no open_clip weights"):
        read_state_dict("hf-hub:someone/RS-M-CLIP")
