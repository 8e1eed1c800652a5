"""Shared fixtures: a tiny randomly initialised Llama with the character tokenizer, made in the test."""

import pytest
import torch


def write_tiny_llama(path, hidden_size=32, intermediate_size=64, max_position_embeddings=4096):
    """A randomly initialised one-layer Llama (2 heads, tied embeddings) with the character tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from srft.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=intermediate_size,
                         max_position_embeddings=max_position_embeddings, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def base_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("srft_cache")


@pytest.fixture(scope="session")
def built_base_model(base_cache_dir):
    """The default built-in base model, built once per test session (a few minutes: slow tests only)."""
    from srft.models.base_model import ensure_base_model

    return ensure_base_model(base_cache_dir, task_name="addition", seed=0, progress=False)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Runs may set torch's thread count (model.threads); give the next test the default back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
