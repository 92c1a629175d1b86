"""Hub-shaped fixtures: a Hugging Face cache that the unchanged `load_dataset(path, name, split=...)` and
`from_pretrained(hub_id)` calls resolve offline, for every dataset and model id the configs name.

Why a filled cache and not a fake hub server: `HF_HUB_OFFLINE=1` with a cache filled beforehand is the path the
SLURM sweeps take (`peftbench prefetch` on the login node, offline compute nodes), and it needs no network code
of ours; `datasets` 5 reads a dataset from its own cache (`<HF_HOME>/datasets/<org>___<name>/<config>/...`)
when the hub is off, and `transformers` reads models from the hub cache (`<HF_HOME>/hub/models--org--name`).

- Datasets: a few made-up rows per split in each dataset's exact schema, from docs/hub_assets.md (its config
  and split names, column names and feature types: ClassLabel names, Image, nested `choices`), written with
  the `datasets` parquet builder into the cache layout an offline `load_dataset` looks up.
- Models: for every hub model entry, a tiny model of the real architecture class and a tokenizer or image
  processor of the real class, trained here on a few sentences: RoBERTa's and GPT-2's byte-level BPE
  (vocab.json, merges.txt), DeBERTaV3's SentencePiece `spm.model` alone (as the hub ships it, so loading it
  needs `sentencepiece`), Llama's SentencePiece `tokenizer.model`, Llama-3's `tokenizer.json`, CLIP's real
  `preprocessor_config.json` (old-style: `size: 224`, `crop_size: 224`, `CLIPFeatureExtractor`, as the hub's
  file is) with `pytorch_model.bin` only (the hub's main branch has no safetensors).
- Rows as irregular as the hub's: ARC rows with 3, 4 and 5 choices and digit keys ("1".."4"), as ARC-Easy and
  ARC-Challenge have; images in RGB, grayscale (L) and RGBA, as the tanganke sets and SVHN/Fashion-MNIST mix.

Each dataset and model is written at a commit (`write_dataset(..., commit=)`, `write_model(..., commit=)`), so a
test can hold two revisions of one dataset in the cache, as a hub re-upload leaves it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, List, Value
from omegaconf import OmegaConf
from peftbench.core.paths import CONF_DIR
from peftbench.tasks.hub_schema import HubDataset, hub_datasets
from PIL import Image as PilImage

ROWS_PER_SPLIT = 8
IMAGE_MODES = ("RGB", "L", "RGBA")
# ARC's choice keys by row: 4 letters (most rows), 3 and 5 letters, 4 digits (both sets have each kind)
ARC_KEYS = (("A", "B", "C", "D"), ("A", "B", "C"), ("A", "B", "C", "D", "E"), ("1", "2", "3", "4"))
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "the",
    "dog",
    "ran",
    "to",
    "a",
    "park",
    "while",
    "birds",
    "sang",
    "in",
    "tall",
    "green",
    "trees",
    "near",
    "water",
]
CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) + f" {i} #### {i * 7}" for i in range(len(WORDS))] + [
    "Please choose the correct answer to the question: answer1 answer2 solution1 option2 ending3 true false",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
]


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# ---------- datasets ----------


def _value(feature: Any, column: str, i: int, rng: np.random.Generator) -> Any:
    if isinstance(feature, ClassLabel):
        return i % feature.num_classes
    if isinstance(feature, Image):  # RGB, grayscale and RGBA rows, as the hub's image sets mix them
        mode = IMAGE_MODES[i % len(IMAGE_MODES)]
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 255, (40, 40, channels), dtype=np.uint8)
        return PilImage.fromarray(pixels[..., 0] if channels == 1 else pixels)  # the array's shape names the mode
    if isinstance(feature, List):
        return [_value(feature.feature, column, j, rng) for j in range(4)]
    if isinstance(feature, dict):
        return {key: _value(sub, key, i, rng) for key, sub in feature.items()}
    if isinstance(feature, Value):
        if feature.dtype == "string":
            return f"{column} {WORDS[i % len(WORDS)]} {WORDS[(3 * i + 1) % len(WORDS)]} {i}"
        if feature.dtype == "bool":
            return i % 2 == 0
        if feature.dtype.startswith("float"):
            return float(i % 5)
        return i
    raise TypeError(f"no fixture value for {feature!r}")


def _meaningful(path: str, row: dict[str, Any], i: int) -> dict[str, Any]:
    """The values the code parses, made valid: labels in range, answers in their format."""
    if path == "allenai/ai2_arc":
        keys = ARC_KEYS[i % len(ARC_KEYS)]
        row["choices"] = {"text": [f"choice {key} {WORDS[i % len(WORDS)]}" for key in keys], "label": list(keys)}
        row["answerKey"] = keys[i % len(keys)]
    elif path == "allenai/openbookqa":
        row["choices"]["label"] = ["A", "B", "C", "D"]
        row["answerKey"] = "ABCD"[i % 4]
    elif path == "Rowan/hellaswag":
        row.update(label=str(i % 4), ctx=f"{row['ctx_a']} {row['ctx_b']}")
    elif path == "lighteval/siqa":
        row["label"] = str(1 + i % 3)
    elif path == "allenai/winogrande":
        row.update(answer=str(1 + i % 2), sentence=f"{row['sentence']} _ won.")
    elif path == "baber/piqa":
        row["label"] = i % 2
    elif path == "openai/gsm8k":
        row["answer"] = f"{row['answer']}\n#### {i * 3}"
    elif path == "meta-math/MetaMathQA":
        row["type"] = ["GSM_AnsAug", "MATH_AnsAug", "GSM_Rephrased", "GSM_SV"][i % 4]
        row["response"] = f"{row['response']} so {i} + {i} = {2 * i}\n#### {2 * i}\nThe answer is: {2 * i}"
    elif path == "zwhe99/commonsense_170k":
        answer = "true" if i % 2 else "false"
        row.update(
            instruction=f"Please answer the following question with true or false, question: {row['instruction']}?"
            "\n\nAnswer format: true/false",
            input="", output=f"the correct answer is {answer}", answer=answer,
        )  # fmt: skip
    return row


def _rows(spec: HubDataset, split: str, count: int = ROWS_PER_SPLIT) -> Dataset:
    rng = np.random.default_rng(len(split))
    rows = [
        _meaningful(spec.path, {c: _value(f, c, i, rng) for c, f in spec.features.items()}, i) for i in range(count)
    ]
    return Dataset.from_list(rows, features=spec.features)


def dataset_commit(spec: HubDataset) -> str:
    """The made-up commit a fixture dataset is written at unless a test names another."""
    return _sha(f"{spec.path}/{spec.config}")


def write_dataset(
    spec: HubDataset, datasets_cache: Path, work: Path, commit: str | None = None, rows: int = ROWS_PER_SPLIT
) -> None:
    """The dataset config into `datasets`' own cache, where an offline `load_dataset(path, name)` finds it, at
    `commit` (the folder name `datasets` gives a hub dataset's prepared copy is its repository's commit)."""
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet

    org, name = spec.path.split("/")
    snake = camelcase_to_snakecase(name)
    files = {}
    for split in spec.splits:
        files[split] = str(work / f"{snake}-{spec.config}-{split}.parquet")
        _rows(spec, split, rows).to_parquet(files[split])
    digest = commit or dataset_commit(spec)
    builder = Parquet(
        cache_dir=str(work / "build"), dataset_name=snake, hash=digest, config_name=spec.config,
        data_files=files, features=spec.features,
    )  # fmt: skip
    builder.download_and_prepare()
    built = Path(builder.cache_dir)  # <work>/build/<snake>/<config>-<id>/0.0.0/<hash>
    target = datasets_cache / f"{org}___{snake}" / spec.config / built.parent.name / built.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(built, target, ignore=shutil.ignore_patterns("*.lock"))
    info = json.loads((target / "dataset_info.json").read_text())
    assert info["config_name"] == spec.config, info["config_name"]  # what the offline lookup checks


# ---------- tokenizers ----------


def _byte_bpe(folder: Path, specials: list[str]) -> None:
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=specials)
    bpe.save_model(str(folder))


def _spm(folder: Path, model_type: str, filename: str, vocab_size: int = 120, **extra: Any) -> Path:
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / "spm"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_prefix=str(prefix), vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, **extra,
    )  # fmt: skip
    target = folder / filename
    (prefix.with_suffix(".model")).rename(target)
    prefix.with_suffix(".vocab").unlink()
    return target


def _tokenizer(model_type: str, hub_id: str, folder: Path) -> int:
    """Write a tokenizer of the real class into `folder` as its hub repository holds it (its raw vocabulary
    files, then the tokenizer.json transformers converts them to); returns the vocabulary size."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    if model_type in ("roberta", "gpt2"):
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if model_type == "roberta" else ["<|endoftext|>"]
        _byte_bpe(folder, specials)  # vocab.json, merges.txt
        config = {"tokenizer_class": "RobertaTokenizer" if model_type == "roberta" else "GPT2Tokenizer"}
    elif model_type == "deberta-v2":  # the hub ships spm.model and a tokenizer_config.json, nothing else
        _spm(folder, "unigram", "spm.model", pad_id=0, unk_id=3, bos_id=1, eos_id=2, control_symbols=["[MASK]"],
             user_defined_symbols=["[CLS]", "[SEP]"])  # fmt: skip
        config = {"do_lower_case": False, "vocab_type": "spm"}
    elif model_type == "llama" and "Llama-3" in hub_id:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        specials = ["<|begin_of_text|>", "<|end_of_text|>"]
        bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
        bos = bpe.token_to_id(specials[0])
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{specials[0]} $A", special_tokens=[(specials[0], bos)]
        )
        bpe.save(str(folder / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[0], "eos_token": specials[1]}
    elif model_type == "llama":
        _spm(folder, "bpe", "tokenizer.model", 400, byte_fallback=True, pad_id=-1, unk_id=0, bos_id=1, eos_id=2)
        config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False}
    else:
        raise ValueError(f"no fixture tokenizer for {model_type}")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if model_type != "deberta-v2":
        tokenizer.save_pretrained(str(folder))  # tokenizer.json beside the raw files, as on the hub
    return len(tokenizer)


# ---------- models ----------

# wider than the sweeps' largest rank (32): KaSA needs r < min(in, out)
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


def _tiny_config(model_cfg: Any, vocab: int) -> Any:
    from transformers import AutoConfig

    real = OmegaConf.to_container(model_cfg.hub_config, resolve=True)
    model_type = real.pop("model_type")
    if model_type == "clip":
        vision = {**TINY, "image_size": real["vision_config"]["image_size"], "patch_size": 32}
        text = {**TINY, "vocab_size": 64, "max_position_embeddings": 77, "bos_token_id": 1, "eos_token_id": 2}
        return AutoConfig.for_model("clip", vision_config=vision, text_config=text, projection_dim=16)
    if model_type == "gpt2":
        return AutoConfig.for_model(
            "gpt2", vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=1024, bos_token_id=0, eos_token_id=0
        )
    keep = {k: v for k, v in real.items() if k not in ("vocab_size", *TINY, "num_key_value_heads")}
    extra = {"num_key_value_heads": 2} if "num_key_value_heads" in real else {}
    if model_type == "deberta-v2":
        keep["pooler_hidden_size"] = 64
        keep["position_buckets"] = 16
    return AutoConfig.for_model(model_type, **keep, **TINY, **extra, vocab_size=vocab)


# openai/clip-vit-base-patch32's preprocessor_config.json on the hub, written before image processors had
# `{"shortest_edge": ...}` sizes; transformers converts it when it loads it
CLIP_PREPROCESSOR = {
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}  # fmt: skip


def model_commit(hub_id: str) -> str:
    """The made-up commit a fixture model is written at unless a test names another."""
    return _sha(hub_id)


def write_model(model_cfg: Any, hub_cache: Path, work: Path, commit: str | None = None) -> None:
    """A tiny model of the entry's real class, with its tokenizer or image processor, as a hub snapshot at
    `commit`; `refs/main` points at it."""
    import torch
    from transformers import AutoModel

    hub_id = model_cfg.hub_id
    sha = commit or model_commit(hub_id)
    repo = hub_cache / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)  # no newline, as huggingface_hub writes it
    model_type = model_cfg.hub_config.model_type
    if model_type == "clip":  # the hub's file as it is: old-style sizes (plain ints), a feature extractor's type
        (snapshot / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR, indent=2))
        vocab = 64
    else:
        model_cfg_path = snapshot / "config.json"  # the model's config first: AutoTokenizer reads its type
        model_cfg_path.write_text(json.dumps({"model_type": model_type}))
        vocab = _tokenizer(model_type, hub_id, snapshot)
    torch.manual_seed(0)
    model = AutoModel.from_config(_tiny_config(model_cfg, vocab))
    model.config.architectures = [type(model).__name__]
    if model_type in ("clip", "deberta-v2"):  # their hub repositories hold pytorch_model.bin alone
        model.config.save_pretrained(str(snapshot))
        torch.save(model.state_dict(), snapshot / "pytorch_model.bin")
    else:
        model.save_pretrained(str(snapshot))


def hub_models() -> list[Any]:
    """Every conf/model entry that loads from the hub."""
    entries = [OmegaConf.load(p) for p in sorted((CONF_DIR / "model").glob("*.yaml"))]
    return [e for e in entries if e.source == "hub"]


def build_hub_cache(root: Path) -> Path:
    """Fill `<root>` (an HF_HOME) with every hub dataset and model; returns it."""
    work = root / ".work"
    for spec in hub_datasets():
        write_dataset(spec, root / "datasets", work)
    seen = set()
    for model_cfg in hub_models():
        if model_cfg.hub_id not in seen:
            seen.add(model_cfg.hub_id)
            write_model(model_cfg, root / "hub", work)
    shutil.rmtree(work, ignore_errors=True)
    return root


def schema_of(features: Features) -> dict[str, str]:
    """A readable schema (for assertions): column -> feature type name."""
    return {
        name: type(feature).__name__ if not isinstance(feature, dict) else "struct"
        for name, feature in features.items()
    }
