"""A byte-level tokenizer built in code: no files, no download. For random-init LLMs built from an inline config."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"


def _byte_alphabet() -> list[str]:
    """One printable character per byte value, in byte order (the byte-level BPE convention): printable
    Latin-1 bytes map to themselves, the others to code points from 256 upwards, so no byte becomes whitespace
    or a control character inside the tokenizer."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet, extra = [], 0
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + extra))
            extra += 1
    return alphabet


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Token id = byte value (0..255) of the UTF-8 text, plus ``<|endoftext|>`` (id 256) as the eos token.

    No pad token: the LLM component adds one, like it does for tokenizers that lack it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in enumerate(_byte_alphabet())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOS_TOKEN])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN)
