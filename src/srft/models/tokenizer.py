"""A character-level tokenizer in Hugging Face format.

Every character of a fixed charset (printable ASCII plus newline) is one
token, so ``len(tokenizer(text).input_ids) == len(text)`` for any text over
that charset; other characters map to ``<unk>``. Special tokens: ``<pad>``
(id 0), ``<bos>``, ``<eos>``, ``<unk>``. Nothing is added automatically when
encoding (no BOS/EOS): callers append ``eos_token_id`` to responses themselves.

The result is a ``transformers.PreTrainedTokenizerFast`` that round-trips
through ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
# Printable ASCII (space to tilde) and newline; fixed order so ids never change.
CHARSET = "\n" + "".join(chr(c) for c in range(32, 127))

assert len(set(CHARSET)) == len(CHARSET) and set(string.digits) <= set(CHARSET)


def build_char_tokenizer(charset: str = CHARSET, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer (deterministic: same charset, same ids)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in charset:
        if ch not in vocab:
            vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Split into single characters, newlines included.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Concatenate tokens back without separators.
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="right",
    )
    return tok
