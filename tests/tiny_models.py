"""Tiny randomly initialised Llama checkpoints with their own small BPE tokenizer, for fast tests.

Importable from any test as ``tiny_models`` (pytest puts the tests folder on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

SHORT_CONTEXT = 32  # positions of the short-context test models: fewer than most demo samples' tokens
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]  # the tiny tokenizer's first ids, in this order
SPECIAL_IDS = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}  # for the models' configs

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _training_corpus() -> list[str]:
    from paser_assets.pool.demo import generate_demo_pool

    records = generate_demo_pool(400, seed=1)
    return [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in records]


def build_tiny_tokenizer(chat_template: bool = True):
    """A byte-level BPE tokenizer (about 600 tokens) trained on generated demo text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer)
    bos, eos, pad = SPECIAL_TOKENS
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, pad_token=pad)
    if chat_template:
        wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_llama(vocab_size: int, seed: int = 0, layers: int = 2, context: int = 1024):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        **SPECIAL_IDS,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def _save(model, tokenizer, folder: Path) -> Path:
    """A checkpoint folder as the package's loaders expect it: safetensors weights and the tokenizer."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_checkpoint(folder: Path, seed: int = 0, chat_template: bool = True, context: int = 1024) -> Path:
    """The tiny Llama and its tokenizer in ``folder``; ``context`` is its max_position_embeddings."""
    tokenizer = build_tiny_tokenizer(chat_template)
    return _save(build_tiny_llama(len(tokenizer), seed, context=context), tokenizer, folder)


def save_trained_tiny_checkpoint(folder: Path, steps: int = 200, seed: int = 0) -> Path:
    """A tiny Llama trained for ``steps`` steps on chat-formatted demo records (a few seconds on a CPU).

    A random model's next-token distributions are nearly uniform, so pruning it barely moves them (JSD of
    about 1e-5 nats) and its NLL is ln(vocabulary size). Trained, its response NLL falls to about 0.5 nats
    and pruning damages the families it learned unequally: the signal PASER selects on.
    """
    import torch

    from paser_assets.pool.demo import generate_demo_pool

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(len(tokenizer), seed)
    texts = [
        tokenizer.apply_chat_template(
            [
                {"role": "user", "content": f"{r['instruction']}\n{r['input']}"},
                {"role": "assistant", "content": r["output"]},
            ],
            tokenize=False,
        )
        for r in generate_demo_pool(400, seed=1)
    ]
    encoded = [tokenizer(text, return_tensors="pt").input_ids[0][:128] for text in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(encoded), (16,), generator=generator)
        batch = torch.nn.utils.rnn.pad_sequence(
            [encoded[i] for i in rows], batch_first=True, padding_value=tokenizer.pad_token_id
        )
        labels = batch.masked_fill(batch == tokenizer.pad_token_id, -100)
        loss = model(input_ids=batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return _save(model, tokenizer, folder)


def save_tiny_sentence_model(folder: Path, *, safe: bool) -> Path:
    """A tiny random BERT with mean pooling saved as a sentence-transformers folder, its weights as
    safetensors or (``safe=False``) as a pickled pytorch_model.bin only."""
    import torch
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    tokenizer = build_tiny_tokenizer(chat_template=False)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    plain = folder.with_name(f"{folder.name}-bert")
    BertModel(config).save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    model = SentenceTransformer(modules=[Transformer(str(plain)), Pooling(16)], device="cpu")
    model.save(str(folder), safe_serialization=safe)
    if not safe and (folder / "model.safetensors").exists():
        # transformers 5 writes safetensors whatever it is asked: pickle the same weights by hand.
        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder


def save_tiny_gpt2_checkpoint(folder: Path, context: int, seed: int = 0) -> Path:
    """A tiny random GPT-2 (learned position embeddings: a position past ``context`` is an IndexError) with
    the tiny tokenizer, in ``folder``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=context,
        **SPECIAL_IDS,
    )
    return _save(GPT2LMHeadModel(config), tokenizer, folder)
