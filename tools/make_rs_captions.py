"""Build remote_sensing/sample_data: EuroSAT RGB chips (copied from ../shared/data), a labels CSV with a fixed
split, multilingual template captions for the train/val chips only, zero-shot prompts in the same languages with
other templates, and a byte-level BPE tokenizer trained on those captions and the RSICD caption text.

    .venv/bin/python tools/make_rs_captions.py   # rewrites remote_sensing/sample_data/{eurosat_*,captions_bpe}
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

from domainfm.data.captions import train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "remote_sensing" / "sample_data"

NAMES = {  # class -> language -> name (written by us; no article so that every template reads)
    "AnnualCrop": {
        "en": "annual crop fields",
        "pt": "campos de cultura anual",
        "es": "campos de cultivo anual",
        "fr": "champs de cultures annuelles",
        "de": "einjährigen Ackerkulturen",
        "it": "campi di colture annuali",
    },
    "Forest": {"en": "forest", "pt": "floresta", "es": "bosque", "fr": "forêt", "de": "Wald", "it": "foresta"},
    "HerbaceousVegetation": {
        "en": "herbaceous vegetation",
        "pt": "vegetação herbácea",
        "es": "vegetación herbácea",
        "fr": "végétation herbacée",
        "de": "krautiger Vegetation",
        "it": "vegetazione erbacea",
    },
    "Highway": {
        "en": "a highway",
        "pt": "uma autoestrada",
        "es": "una autopista",
        "fr": "une autoroute",
        "de": "einer Autobahn",
        "it": "un'autostrada",
    },
    "Industrial": {
        "en": "an industrial area",
        "pt": "uma área industrial",
        "es": "una zona industrial",
        "fr": "une zone industrielle",
        "de": "einem Industriegebiet",
        "it": "un'area industriale",
    },
    "Pasture": {"en": "pasture", "pt": "pastagem", "es": "pasto", "fr": "pâturage", "de": "Weideland", "it": "pascolo"},
    "PermanentCrop": {
        "en": "permanent crops",
        "pt": "culturas permanentes",
        "es": "cultivos permanentes",
        "fr": "cultures permanentes",
        "de": "Dauerkulturen",
        "it": "colture permanenti",
    },
    "Residential": {
        "en": "a residential area",
        "pt": "uma área residencial",
        "es": "una zona residencial",
        "fr": "une zone résidentielle",
        "de": "einem Wohngebiet",
        "it": "un'area residenziale",
    },
    "River": {
        "en": "a river",
        "pt": "um rio",
        "es": "un río",
        "fr": "une rivière",
        "de": "einem Fluss",
        "it": "un fiume",
    },
    "SeaLake": {
        "en": "a sea or lake",
        "pt": "um mar ou lago",
        "es": "un mar o lago",
        "fr": "une mer ou un lac",
        "de": "einem Meer oder See",
        "it": "un mare o lago",
    },
}
TRAIN_TEMPLATES = {
    "en": ["a satellite image of {}.", "an aerial view of {}.", "{} seen from above."],
    "pt": ["uma imagem de satélite de {}.", "uma vista aérea de {}.", "vista de cima: {}."],
    "es": ["una imagen de satélite de {}.", "una vista aérea de {}.", "vista desde arriba: {}."],
    "fr": ["une image satellite de {}.", "une vue aérienne de {}.", "vue d'en haut : {}."],
    "de": ["ein Satellitenbild von {}.", "eine Luftaufnahme von {}.", "von oben gesehen: {}."],
    "it": ["un'immagine satellitare di {}.", "una vista aerea di {}.", "vista dall'alto: {}."],
}
ZEROSHOT_TEMPLATES = {  # other wording than the training captions
    "en": ["a remote sensing photo of {}."],
    "pt": ["uma foto de sensoriamento remoto de {}."],
    "es": ["una foto de teledetección de {}."],
    "fr": ["une photo de télédétection de {}."],
    "de": ["ein Fernerkundungsfoto von {}."],
    "it": ["una foto di telerilevamento di {}."],
}


def main() -> None:
    src = SHARED / "remote_sensing" / "eurosat_rgb_small"
    dst = OUT / "eurosat_rgb_small"
    shutil.copytree(src, dst, dirs_exist_ok=True)
    rng = random.Random(0)
    rows, captions = [], []
    for cls in sorted(NAMES):
        files = sorted(p.name for p in (dst / cls).glob("*.jpg"))
        rng.shuffle(files)
        for i, name in enumerate(files):  # 10 per class: 6 train, 1 val, 3 test
            split = "train" if i < 6 else "val" if i < 7 else "test"
            path = f"{cls}/{name}"
            rows.append((path, cls, split))
            if split != "test":  # no caption ever describes a test chip
                for lang, templates in TRAIN_TEMPLATES.items():
                    captions += [(path, t.format(NAMES[cls][lang]), lang) for t in templates]
    with open(OUT / "eurosat_labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    test_caps = [
        (p, t.format(NAMES[c][lang]), lang)
        for p, c, s in rows
        if s == "test"
        for lang, ts in ZEROSHOT_TEMPLATES.items()
        for t in ts
    ]
    for name, caps in (("eurosat_captions.csv", captions), ("eurosat_test_captions.csv", test_caps)):
        with open(OUT / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("path", "caption", "language"), *caps])
    prompts = {"templates": ZEROSHOT_TEMPLATES, "classes": NAMES}
    (OUT / "eurosat_prompts.json").write_text(json.dumps(prompts, indent=1, ensure_ascii=False), encoding="utf-8")
    rsicd = json.loads((SHARED / "image_text" / "rsicd_sample" / "captions_val2017.json").read_text())
    texts = [c for _, c, _ in captions] + [a["caption"] for a in rsicd["annotations"]]
    shutil.rmtree(OUT / "captions_bpe", ignore_errors=True)
    train_bpe_tokenizer(texts, OUT / "captions_bpe", vocab_size=2000)
    print(f"{len(rows)} chips, {len(captions)} training captions, {len(test_caps)} test captions -> {OUT}")


if __name__ == "__main__":
    main()
