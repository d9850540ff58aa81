"""Our tokenization against transformers' AutoTokenizer on the real all-MiniLM-L6-v2 (bge's vocabulary)."""
import numpy as np
from transformers import AutoTokenizer

from .conftest import TEXTS

LONG = "Embedding models truncate long inputs. " * 200  # ~1,400 tokens, over MiniLM's 256


def test_batch_matches_autotokenizer(minilm, minilm_path):
    texts = TEXTS + [LONG, "  leading and trailing spaces  ", "UPPER lower MiXeD", "tab\tand\nnewline"]
    ours = minilm.tokenize(texts)
    ref = AutoTokenizer.from_pretrained(minilm_path)(texts, padding=True, truncation=True,
                                                     max_length=minilm.max_length, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)
        assert ours[key].dtype == np.int64
    assert ours["input_ids"].shape == (len(texts), 256)  # truncated to max_seq_length, not the file's 128


def test_padding_is_ours_not_the_files(minilm):
    # tokenizer.json pads everything to 128; we pad to the longest text in the batch.
    assert minilm.tokenize(["hi", "hello there"])["input_ids"].shape == (2, 4)


def test_count_tokens_is_before_truncation(minilm):
    n = minilm.count_tokens(["hello world", LONG])
    assert n[0] == 4 and n[1] > 1000
    assert minilm.tokenize([LONG])["input_ids"].shape[1] == 256
