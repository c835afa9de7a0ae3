"""Small sentence-transformers models built locally (no download) for the compat tests and the run of
sentence-transformers' own loss tests (tools/st_peer_tests.py)."""
from __future__ import annotations

import torch


def tiny_bert(path, words, hidden, dtype=torch.float64, *, layers=1, dropout=0.0):
    """A BERT of ``layers`` layers (random weights, ``hidden`` wide, ``dropout``, mean pooling) with a word-level tokenizer over
    ``words``, saved to ``path`` and loaded as a SentenceTransformer: a model with a transformers
    tokenizer (as GIST needs) that needs no download."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                        sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=32, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    transformer = Transformer(str(path), max_seq_length=16)
    model = SentenceTransformer(modules=[transformer, Pooling(hidden, "mean")], device="cpu")
    return model.to(dtype)
