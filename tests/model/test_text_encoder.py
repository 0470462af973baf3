from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from worldloop.model.text import (
    CachedTextEncoder,
    HashingEncoder,
    MiniLMEncoder,
    T5Encoder,
    TextEncoder,
    TextEncoderConfig,
    TextEncoding,
    build_text_encoder,
    default_minilm_path,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

TEXTS = ["open the door", "the door opens", "it starts to snow", "jump!"]


def _block_network(mp: pytest.MonkeyPatch) -> None:
    """Offline env vars plus a socket that refuses to connect: loading must not need either."""
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1))


def _check_encoding(enc: TextEncoding, *, batch: int, dim: int, max_length: int) -> None:
    assert enc.tokens.shape[0] == batch and enc.tokens.shape[2] == dim
    assert enc.tokens.dtype == torch.float32 and enc.mask.dtype == torch.bool
    assert enc.tokens.shape[1] <= max_length
    assert enc.mask.sum(dim=1).min() >= 1
    assert enc.mask[:, 0].all()  # right padding: real tokens first
    assert torch.all(enc.tokens[~enc.mask] == 0)
    torch.testing.assert_close(enc.pooled.norm(dim=-1), torch.ones(batch))
    assert not enc.tokens.requires_grad and not enc.pooled.requires_grad


# --------------------------------------------------------------------------- MiniLM (one load)


@pytest.fixture(scope="module")
def minilm() -> Iterator[MiniLMEncoder]:
    with pytest.MonkeyPatch.context() as mp:
        _block_network(mp)
        encoder = build_text_encoder(TextEncoderConfig(kind="minilm", max_length=32))
    assert isinstance(encoder, MiniLMEncoder)
    yield encoder


def test_minilm_shapes_masks_and_frozen(minilm: MiniLMEncoder) -> None:
    enc = minilm.encode(TEXTS)
    _check_encoding(enc, batch=len(TEXTS), dim=384, max_length=32)
    # [CLS] + words + [SEP]; "jump!" splits into jump, !
    assert enc.mask.sum(dim=1).tolist() == [5, 5, 6, 4]
    assert isinstance(minilm, TextEncoder) and minilm.dim == 384
    model = minilm._model
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_minilm_truncates_long_text(minilm: MiniLMEncoder) -> None:
    enc = minilm.encode(["walk " * 200, "stop"])
    assert enc.tokens.shape[1] == 32 and enc.mask[0].all() and enc.mask[1].sum() == 3


def test_minilm_is_deterministic_and_batch_independent(minilm: MiniLMEncoder) -> None:
    first, second = minilm.encode(TEXTS), minilm.encode(TEXTS)
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.pooled, second.pooled)
    alone = minilm.encode([TEXTS[3]])
    n = int(alone.mask.sum())
    torch.testing.assert_close(alone.tokens[0, :n], first.tokens[3, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.pooled[0], first.pooled[3], atol=1e-5, rtol=1e-5)


def test_minilm_semantic_sanity(minilm: MiniLMEncoder) -> None:
    pooled = minilm.encode(TEXTS).pooled
    assert _cos(pooled[0], pooled[1]) > _cos(pooled[0], pooled[2]) + 0.2


def test_minilm_matches_sentence_transformers(minilm: MiniLMEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    from sentence_transformers import SentenceTransformer

    _block_network(monkeypatch)
    reference = SentenceTransformer(str(default_minilm_path()), device="cpu", local_files_only=True)
    expected = reference.encode(TEXTS, convert_to_tensor=True)
    cosines = F.cosine_similarity(minilm.encode(TEXTS).pooled, expected.cpu(), dim=-1)
    assert cosines.min() > 0.999


def test_cache_over_minilm_equals_direct_batch(minilm: MiniLMEncoder) -> None:
    cached = CachedTextEncoder(minilm, capacity=8)
    cached.encode(TEXTS[:2])
    got = cached.encode(TEXTS)  # two hits encoded in another batch, two misses
    want = minilm.encode(TEXTS)
    assert torch.equal(got.mask, want.mask)
    torch.testing.assert_close(got.tokens, want.tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pooled, want.pooled, atol=1e-5, rtol=1e-5)
    assert cached.stats.hits == 2 and cached.stats.misses == 4


def test_minilm_rejects_bad_input(minilm: MiniLMEncoder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one text"):
        minilm.encode([])
    with pytest.raises(ValueError, match="sequence of texts"):
        minilm.encode("open the door")
    with pytest.raises(ValueError, match="lacks"):
        MiniLMEncoder(tmp_path)
    with pytest.raises(ValueError, match="exceeds"):
        MiniLMEncoder(max_length=513)


# --------------------------------------------------------------------------- tiny T5 / umT5

VOCAB = ["<pad>", "</s>", "<unk>", "open", "the", "door", "it", "starts", "to", "snow", "walk"]


def _save_tiny_t5(folder: Path, model_type: str) -> PreTrainedModel:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    if model_type == "t5":
        cfg = T5Config(vocab_size=len(VOCAB), d_model=32, d_kv=16, num_layers=2, num_heads=2, d_ff=64)
        model: PreTrainedModel = T5EncoderModel(cfg)
    else:
        ucfg = UMT5Config(vocab_size=len(VOCAB), d_model=32, d_kv=16, num_layers=2, num_heads=2, d_ff=64)
        model = UMT5EncoderModel(ucfg)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval()


@pytest.mark.parametrize("model_type", ["t5", "umt5"])
def test_t5_round_trip(model_type: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = _save_tiny_t5(tmp_path, model_type)
    assert any(tmp_path.glob("*.safetensors"))
    _block_network(monkeypatch)
    encoder = build_text_encoder(TextEncoderConfig(kind="t5", path=tmp_path, max_length=6))
    assert isinstance(encoder, T5Encoder) and encoder.dim == 32
    texts = ["open the door", "walk", "it starts to snow walk walk walk"]
    enc = encoder.encode(texts)
    _check_encoding(enc, batch=3, dim=32, max_length=6)
    assert enc.tokens.shape == (3, 6, 32)
    assert enc.mask.sum(dim=1).tolist() == [4, 2, 6]  # words + </s>, the last one truncated
    ids = torch.tensor([[3, 4, 5, 1]])
    with torch.no_grad():
        want = original(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(enc.tokens[0, :4], want, atol=1e-5, rtol=1e-5)


def test_t5_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        T5Encoder(tmp_path / "nowhere")
    _save_tiny_t5(tmp_path, "t5")
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="tokenizer"):
        T5Encoder(tmp_path)
    weights = next(tmp_path.glob("*.safetensors"))
    weights.rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="convert them to safetensors"):
        T5Encoder(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        T5Encoder(tmp_path)


def test_t5_rejects_other_architectures(tmp_path: Path) -> None:
    _save_tiny_t5(tmp_path, "t5")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type='bert'"):
        T5Encoder(tmp_path)


# --------------------------------------------------------------------------- hashing + cache + config


def test_hashing_shapes_determinism_and_limits() -> None:
    encoder = build_text_encoder(TextEncoderConfig(kind="hashing", dim=16, max_length=4))
    assert isinstance(encoder, HashingEncoder) and isinstance(encoder, TextEncoder)
    enc = encoder.encode(["Open the DOOR", "", "a b c d e f"])
    _check_encoding(enc, batch=3, dim=16, max_length=4)
    assert enc.mask.sum(dim=1).tolist() == [4, 1, 4]  # start token + words, truncated at 4
    again = HashingEncoder(16, max_length=4).encode(["open the door"])
    assert torch.equal(again.tokens[0], enc.tokens[0]) and torch.equal(again.pooled[0], enc.pooled[0])
    other_seed = HashingEncoder(16, max_length=4, seed=1).encode(["open the door"])
    assert not torch.allclose(other_seed.pooled, again.pooled)


def test_hashing_is_word_identity_only() -> None:
    encoder = HashingEncoder(64)
    pooled = encoder.encode(["open the door", "door the open", "open the doors", "it starts to snow"]).pooled
    torch.testing.assert_close(pooled[0], pooled[1])  # order-free by design
    assert _cos(pooled[0], pooled[2]) > _cos(pooled[0], pooled[3])  # shares 2 of 3 words
    with pytest.raises(ValueError, match="at least one text"):
        encoder.encode([])
    with pytest.raises(ValueError, match="must be a str"):
        encoder.encode(["ok", 3])  # type: ignore[list-item]


class _Recording:
    """Wraps an encoder and records each batch it is asked for."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []
        self.dim, self.max_length = inner.dim, inner.max_length

    def encode(self, texts: Sequence[str]) -> TextEncoding:
        self.calls.append(list(texts))
        return self.inner.encode(texts)


def test_cache_is_lru_and_encodes_only_misses() -> None:
    inner = _Recording(HashingEncoder(8))
    cached = CachedTextEncoder(inner, capacity=2)
    first = cached.encode(["a", "b c", "a"])
    want = HashingEncoder(8).encode(["a", "b c", "a"])
    assert torch.equal(first.tokens, want.tokens) and torch.equal(first.pooled, want.pooled)
    cached.encode(["b c"])
    cached.encode(["d"])  # evicts "a", the least recently used
    cached.encode(["a", "d"])
    assert inner.calls == [["a", "b c"], ["d"], ["a"]]
    stats = cached.stats
    assert (stats.hits, stats.misses, stats.size, stats.capacity) == (3, 4, 2, 2)
    with pytest.raises(ValueError, match="capacity"):
        CachedTextEncoder(inner, capacity=0)


def test_config_cross_field_rules() -> None:
    with pytest.raises(ValidationError, match="needs path"):
        TextEncoderConfig(kind="t5")
    with pytest.raises(ValidationError, match="drop path"):
        TextEncoderConfig(kind="hashing", path=Path("/tmp"))
    with pytest.raises(ValidationError, match="drop dim"):
        TextEncoderConfig(kind="minilm", dim=16)
    with pytest.raises(ValidationError):
        TextEncoderConfig(kind="minilm", max_len=8)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        TextEncoderConfig(kind="clip")  # type: ignore[arg-type]
    cfg = TextEncoderConfig(kind="minilm")
    with pytest.raises(ValidationError):
        cfg.max_length = 8  # type: ignore[misc]
    assert default_minilm_path().joinpath("model.safetensors").is_file()


def test_text_encoding_validates_shapes() -> None:
    with pytest.raises(ValueError, match="mask"):
        TextEncoding(torch.zeros(2, 3, 4), torch.ones(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="pooled"):
        TextEncoding(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 5))
