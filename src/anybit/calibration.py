"""Calibration data for the data-driven quantizers (``gptq``, mixed precision).

A calibration set is a LongTensor of token ids of shape (n_samples, seq_len).
:func:`calibration_ids` builds one from what a user has: ids already, a list
of strings plus a tokenizer, or nothing but a tokenizer, in which case the
text shipped with anybit is used.

The shipped text (``anybit/data/kjv_calibration.txt``) is King James Bible
prose from books other than Genesis (Exodus, Psalms, Proverbs, Isaiah,
Matthew, John, Acts, Romans), so that it never overlaps the Genesis text the
demo and ``anybit eval`` score by default.  It is one register of English;
for a model meant for other text, calibrate on samples of that text.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import torch
from torch import Tensor

DEFAULT_SAMPLES = 64
DEFAULT_SEQ_LEN = 512
CALIBRATION_FILE = "kjv_calibration.txt"


def default_text() -> str:
    """The calibration text shipped with anybit (about 360 kB of KJV prose, no Genesis)."""
    return (resources.files("anybit") / "data" / CALIBRATION_FILE).read_text()


def _windows(ids: Tensor, n_samples: int, seq_len: int, seed: int) -> Tensor:
    """``n_samples`` windows of ``seq_len`` tokens at seeded random offsets of a 1-D id stream."""
    if ids.numel() < seq_len:
        raise ValueError(
            f"the calibration text has {ids.numel()} tokens, fewer than seq_len={seq_len}; "
            f"pass more text or a smaller seq_len"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n_samples,), generator=gen)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def calibration_ids(
    calibration: Tensor | Sequence[str] | None = None,
    tokenizer=None,
    *,
    n_samples: int = DEFAULT_SAMPLES,
    seq_len: int = DEFAULT_SEQ_LEN,
    seed: int = 0,
) -> Tensor:
    """Token ids to calibrate on, LongTensor (n_samples, seq_len).

    Args:
        calibration: a LongTensor (n_samples, seq_len) of token ids, used as
            given; or a list of strings, which are tokenized with
            ``tokenizer``, joined into one stream and cut into ``n_samples``
            windows of ``seq_len`` tokens at seeded random offsets; or None for
            the text shipped with anybit (:func:`default_text`), cut the same way.
        tokenizer: a transformers tokenizer (anything callable as
            ``tokenizer(text)["input_ids"]``); needed unless ``calibration``
            is a tensor.
        n_samples, seq_len: the windows cut from text (ignored for a tensor).
        seed: seeds the window offsets.

    Raises:
        ValueError: a tensor that is not 2-D integer, text without a
            tokenizer, an empty list, or text shorter than ``seq_len`` tokens.
    """
    if isinstance(calibration, Tensor):
        if calibration.dim() != 2 or calibration.dtype != torch.long or calibration.numel() == 0:
            raise ValueError(
                f"calibration must be a LongTensor of shape (n_samples, seq_len), "
                f"got {calibration.dtype} {tuple(calibration.shape)}"
            )
        return calibration
    if n_samples < 1 or seq_len < 2:
        raise ValueError(f"n_samples={n_samples} must be >= 1 and seq_len={seq_len} >= 2")
    if calibration is None:
        texts = [default_text()]
    elif isinstance(calibration, str):
        raise ValueError("calibration must be a list of strings, not one string: wrap it as [text]")
    else:
        texts = list(calibration)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("calibration must be a LongTensor of token ids or a non-empty list of strings")
    if tokenizer is None:
        raise ValueError(
            "calibration from text needs tokenizer=: pass the model's tokenizer, "
            "or calibration= a LongTensor (n_samples, seq_len) of token ids"
        )
    stream = torch.cat([torch.as_tensor(tokenizer(t)["input_ids"], dtype=torch.long).flatten() for t in texts])
    return _windows(stream, n_samples, seq_len, seed)
