"""SentencePiece tokenizer: trained on the train split, used everywhere.

One `spm.model` serves tf.data and the SavedModel (through
`tensorflow_text.SentencepieceTokenizer`) and the edge app (through the
`sentencepiece` library): the same C++ implementation, so ids match.
Special ids: pad 0, unk 1, bos 2, eos 3. Classification adds no bos/eos.
A tokenizer trained for pre-training also has the control symbol [MASK]
(id 4), which no text ever produces.
"""

from __future__ import annotations

import io
import json
import os
import re
import time

from pipeline.config import TokenizerConfig

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MASK_TOKEN = "[MASK]"
MODEL_FILE = "spm.model"


def train_sentencepiece(texts, cfg: TokenizerConfig, out_dir: str, log=print,
                        control_symbols: tuple[str, ...] = ()) -> str:
    """Trains SentencePiece on `texts`; writes <out_dir>/spm.model atomically.

    Reuses an existing model trained with the same settings (a rerun resumes).
    Returns the model path.
    """
    import sentencepiece as spm

    path = os.path.join(out_dir, MODEL_FILE)
    settings = {"vocabulary_size": cfg.vocabulary_size, "model_type": cfg.model_type,
                "character_coverage": cfg.character_coverage,
                "lowercase": cfg.lowercase, "num_texts": len(texts)}
    if control_symbols:
        settings["control_symbols"] = list(control_symbols)
    settings_path = os.path.join(out_dir, "tokenizer.json")
    if os.path.isfile(path) and os.path.isfile(settings_path):
        with open(settings_path) as f:
            if json.load(f) == settings:
                log(f"[tokenizer] reusing {path}")
                return path
    os.makedirs(out_dir, exist_ok=True)
    start = time.time()
    log(f"[tokenizer] training SentencePiece ({cfg.model_type}, "
        f"vocabulary {cfg.vocabulary_size:,}) on {len(texts):,} texts ...")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(t for t in texts if t.strip()),
            model_writer=model,
            vocab_size=cfg.vocabulary_size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            normalization_rule_name="nmt_nfkc_cf" if cfg.lowercase else "nmt_nfkc",
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            control_symbols=list(control_symbols),
            hard_vocab_limit=False,  # small data sets get a smaller vocabulary
            input_sentence_size=1_000_000, shuffle_input_sentence=True,
            max_sentence_length=1 << 16, num_threads=2, minloglevel=2,
        )
    except RuntimeError as err:   # the C++ trainer's check failures
        raise _training_error(err, cfg) from None
    from pipeline.files import write_atomic

    write_atomic(path, model.getvalue())
    write_atomic(settings_path, json.dumps(settings))
    log(f"[tokenizer] wrote {path} (vocabulary {vocabulary_size(path):,}, "
        f"{time.time() - start:.1f}s)")
    return path


def _training_error(err: RuntimeError, cfg: TokenizerConfig) -> Exception:
    """A SentencePiece trainer failure as a ConfigError naming the keys to change."""
    from pipeline.config import ConfigError

    message = str(err).strip().splitlines()[0] if str(err).strip() else "failed"
    message = re.sub(r"^[A-Z_]+: \S+\(\d+\) ", "", message)   # "INTERNAL: file.cc(467) "
    if "sentences_.empty()" in message:
        return ConfigError("SentencePiece has nothing to train on: every train text is "
                           "empty or whitespace")
    needed = re.search(r"(\d+) vs (\d+)", message)
    if "required_chars" in message and needed:
        return ConfigError(
            f"config key 'tokenizer.vocabulary_size' = {cfg.vocabulary_size}: the train "
            f"texts need at least {needed.group(2)} pieces (their characters at "
            f"tokenizer.character_coverage={cfg.character_coverage}, and the special "
            "ids); raise it or lower tokenizer.character_coverage")
    return ConfigError(f"SentencePiece could not train on the train split with "
                       f"tokenizer.vocabulary_size={cfg.vocabulary_size}: {message}")


def vocabulary_size(path: str) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=path).get_piece_size()


def token_id(path: str, piece: str) -> int:
    """The id of `piece` in the SentencePiece model at `path`; ValueError if absent."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=path)
    token = sp.piece_to_id(piece)
    if token == sp.unk_id() and piece != sp.id_to_piece(token):
        raise ValueError(f"{path} has no {piece!r} token; pre-training needs a "
                         "tokenizer trained by pre-training (pipeline/tasks/masked_lm.py)")
    return token


def read_model(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# Bytes of text tokenized per kept token: a SentencePiece piece is at most 16
# characters of at most 4 bytes each.
BYTES_PER_TOKEN = 64


def max_text_bytes(max_sequence_length: int) -> int:
    """Only this many leading bytes of a text are tokenized (the edge bundle's
    manifest records it, so the app cuts texts the same way)."""
    return BYTES_PER_TOKEN * max_sequence_length


_seed_generation = [0]


def set_global_seed(seed: int) -> None:
    """`keras.utils.set_random_seed`, noting that it cleared TF's kernel cache
    (and with it the tokenizer ops' resources; InGraphTokenizer re-creates
    them)."""
    import keras

    keras.utils.set_random_seed(seed)
    _seed_generation[0] += 1


class InGraphTokenizer:
    """tensorflow-text SentencePiece tokenization to fixed-length int32 ids.

    `__call__(texts)` maps a (batch,) tf.string tensor to (batch,
    max_sequence_length) int32 ids, truncated and right-padded with PAD_ID.
    A pure tf function: runs eagerly, in Dataset.map and in a SavedModel.

    A text is cut to its first `max_text_bytes(max_sequence_length)` bytes
    before tokenization. They hold its first max_sequence_length pieces unless
    it starts with kilobytes of whitespace or of characters outside the
    vocabulary; and the tensorflow-text op takes time quadratic in the length
    of a run it cannot split (1 MB of emoji: 11 s), which a served request
    must not be able to cost.
    """

    def __init__(self, model_bytes: bytes, max_sequence_length: int):
        self.max_sequence_length = max_sequence_length
        self.max_text_bytes = max_text_bytes(max_sequence_length)
        self._model_bytes = model_bytes
        self._tokenizer, self._generation = None, -1

    @property
    def tokenizer(self):
        """The tensorflow-text op's tokenizer, created eagerly on first use.

        Its resource belongs to TF's kernel cache, which `set_global_seed`
        clears: the tokenizer is created again after a seed change, so a
        tokenizer made before training still works after it.
        """
        import tensorflow as tf
        import tensorflow_text as tf_text

        if self._tokenizer is None or self._generation != _seed_generation[0]:
            with tf.init_scope():
                self._tokenizer = tf_text.SentencepieceTokenizer(
                    model=self._model_bytes, out_type="int32")
            self._generation = _seed_generation[0]
        return self._tokenizer

    def ragged(self, texts):
        """(batch,) strings -> ragged (batch, None) int32 ids, truncated."""
        import tensorflow as tf

        texts = tf.strings.substr(texts, 0, self.max_text_bytes)
        return self.tokenizer.tokenize(texts)[:, : self.max_sequence_length]

    def __call__(self, texts):
        ids = self.ragged(texts)
        return ids.to_tensor(default_value=PAD_ID,
                             shape=[None, self.max_sequence_length])
