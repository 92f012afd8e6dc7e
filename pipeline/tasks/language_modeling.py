"""Language modeling: a decoder-only Transformer (GPT) that continues text.

Data: the TFDS builder `fortunes` over the Debian package `fortunes`
(`pipeline/datasets/fortunes.py`: one example per fortune, split by a stable
hash of its text), or a corpus of the user's own (`data.source` "csv" or
"jsonl" with `data.text_column`, or "text": one text per non-empty line;
`pipeline.sources.load_corpus`, streamed when larger than
`data.sample_examples`). Assets: a SentencePiece model trained on the train
split (of its sample) only. Every text becomes `[bos] tokens [eos]`, its tokens cut at
`model.max_sequence_length - 1`, so a text and its end fit one sequence of
`max_sequence_length + 1` ids.

Training rows are packed: the shuffled texts are concatenated and cut into
rows of `max_sequence_length + 1` ids (a text may continue in the next row),
each token keeping the number of its text (`segment_ids`); attention never
crosses texts, and the pair (eos of a text -> bos of the next) is not a
target. Loss: next-token cross-entropy over the real targets. Metrics:
validation perplexity (picks the best checkpoint), token accuracy; test
perplexity of every text on its own (`[bos] tokens` predicts `tokens
[eos]`), beside a unigram and an add-one bigram model counted on the train
split's ids and scored on the same test tokens. Sample generations (keras-hub
samplers, `generate.*`) go to TensorBoard at each validation and to
metrics.json.
"""

from __future__ import annotations

import math
import time

import numpy as np

from pipeline.config import check
from pipeline.files import write_json
from pipeline.tasks import register_task
from pipeline.tasks.base import Task, sample_indices

SPLITS = ("train", "validation", "test")
# The export's check: greedy continuations (first AGREEMENT_TOKENS ids) of
# AGREEMENT_PROMPTS test prompts from Keras, the SavedModel and each TFLite
# variant.
AGREEMENT_TOKENS = 20
AGREEMENT_PROMPTS = 200
PROMPT_WORDS = 5


def agreement_prompts(texts: list[str], count: int = AGREEMENT_PROMPTS) -> list[str]:
    """The first `PROMPT_WORDS` words of the first `count` texts."""
    return [" ".join(t.split()[:PROMPT_WORDS]) for t in texts[:count]]


@register_task("language_modeling")
class LanguageModelingTask(Task):
    best_metric = "perplexity"
    best_direction = "min"
    log_names = {"token_accuracy": "tok-acc"}

    @classmethod
    def validate_config(cls, cfg) -> None:
        from models.causal_lm import SAMPLERS

        g = cfg.generate
        check(cfg.data.source in ("fortunes", "csv", "jsonl", "text"), "data.source",
              cfg.data.source, "'fortunes', or 'csv', 'jsonl' or 'text' (a corpus of your "
              "own, data.train_path) for task 'language_modeling'")
        check(not cfg.pretrain.enabled, "pretrain.enabled", cfg.pretrain.enabled,
              "false for task 'language_modeling'")
        check(cfg.model.max_sequence_length >= 4, "model.max_sequence_length",
              cfg.model.max_sequence_length, ">= 4 for task 'language_modeling'")
        check(g.strategy in SAMPLERS, "generate.strategy", g.strategy,
              "one of " + ", ".join(map(repr, SAMPLERS)))
        check(g.temperature > 0, "generate.temperature", g.temperature, "> 0")
        check(g.top_k > 0, "generate.top_k", g.top_k, "> 0")
        check(0 < g.top_p <= 1, "generate.top_p", g.top_p, "in (0, 1]")
        check(g.max_new_tokens > 0, "generate.max_new_tokens", g.max_new_tokens, "> 0")
        for prompt in g.prompts:
            check(isinstance(prompt, str) and len(prompt) <= 1000, "generate.prompts",
                  prompt, "strings of at most 1,000 characters")

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        # Texts by split: all of them, or for a split of a user's corpus larger
        # than data.sample_examples a seeded sample (the split streams from
        # `self.corpus`'s files).
        self.texts: dict[str, list[str]] | None = None
        self.corpus = None   # the user's corpus (pipeline.sources.load_corpus)
        self.tokenizer_path: str | None = None
        self._tokenizer = None
        self._train_tokens = None
        self._train_token_count = None
        self._generate = {}
        self._score = {}

    # --------------------------------------------------------------- data
    def prepare(self, strategy=None) -> None:
        """The data (the TFDS fortunes builder, prepared once, or the user's
        own csv/jsonl/text corpus), its data card, the tokenizer."""
        from pipeline.datasets.fortunes import data_card, format_data_card
        from pipeline.tokenizer import train_sentencepiece

        if self.texts is not None:
            return
        cfg, log = self.cfg, self.log
        if cfg.data.source == "fortunes":
            rows_of = self._read_fortunes()
            card = data_card(rows_of, cfg.data.fortunes_path)
        else:
            from pipeline.sources import load_corpus

            self.corpus = load_corpus(cfg.data, cfg.runtime.artifacts_root, log)
            rows_of = {split: [("corpus", str(t)) for t in self.corpus.sample(split)[0]]
                       for split in SPLITS}
            card = data_card(rows_of, cfg.data.train_path, name=f"{cfg.data.source} corpus")
            for split in self._streamed_splits():   # lengths are of the sample
                card["splits"][split].update(entries=self.corpus.num_examples(split),
                                             length_sample=len(rows_of[split]))
                card["categories"]["corpus"][split] = self.corpus.num_examples(split)
        self.texts = {split: [text for _, text in rows_of[split]] for split in SPLITS}
        write_json(self.path("data_card.json"), card)
        log(format_data_card(card))
        self.tokenizer_path = train_sentencepiece(
            self.texts["train"], cfg.tokenizer, self.path("tokenizer"), log=log)

    def _read_fortunes(self) -> dict[str, list[tuple[str, str]]]:
        import tensorflow_datasets as tfds

        from pipeline.datasets.fortunes import Fortunes, fortune_files
        from pipeline.sources import tfds_data_dir

        cfg, log = self.cfg, self.log
        d = cfg.data
        fortune_files(d.fortunes_path)  # a missing package: the apt-get command
        tfds.disable_progress_bar()
        builder = Fortunes(path=d.fortunes_path, log=log,
                           data_dir=tfds_data_dir(d, cfg.runtime.artifacts_root))
        log(f"[data] preparing TFDS fortunes from {d.fortunes_path} into "
            f"{builder.data_dir} (cached after the first run)")
        builder.download_and_prepare()
        rows_of = {}
        for split in SPLITS:
            spec = f"{split}[:{d.max_examples_per_split}]" if d.max_examples_per_split \
                else split
            rows = tfds.as_numpy(builder.as_dataset(split=spec, shuffle_files=False))
            rows_of[split] = [(row["category"].decode("utf-8"), row["text"].decode("utf-8"))
                              for row in rows]
        return rows_of

    def _streamed_splits(self) -> list[str]:
        """Splits read from files at every pass (a user's corpus larger than
        data.sample_examples)."""
        if self.corpus is None:
            return []
        return [s for s in SPLITS if not self.corpus.complete(s)]

    def num_examples(self, split: str) -> int:
        """Texts of a split; for "train", the packed rows of one epoch."""
        if split != "train":
            return self.corpus.num_examples(split) if self.corpus else len(self.texts[split])
        if "train" in self._streamed_splits():
            if self._train_token_count is None:   # one streaming pass, counted in the graph
                import tensorflow as tf

                from pipeline.input import tokenize_examples

                self._train_token_count = int(tokenize_examples(
                    self._source("train"), self.preprocess, self._trim).reduce(
                    tf.constant(0, tf.int64),
                    lambda n, e: n + tf.size(e["token_ids"], out_type=tf.int64)))
            tokens = self._train_token_count
        else:
            tokens = sum(len(ids) for ids in self.token_ids("train"))
        return max(tokens // (self.cfg.model.max_sequence_length + 1), 1)

    def sample(self, split, max_examples=0, seed=None):
        texts = self.texts[split]
        return [{"text": texts[i]} for i in sample_indices(len(texts), max_examples, seed)]

    def _source(self, split, input_context=None):
        """{"text"} of the whole split, this input pipeline's share (a streamed
        split by file, else by element)."""
        import tensorflow as tf

        from pipeline.prepared import shard_elements

        if split in self._streamed_splits():
            return self.corpus.dataset(split, input_context).map(lambda e: {"text": e["text"]})
        return shard_elements(tf.data.Dataset.from_tensor_slices(
            {"text": np.array(self.texts[split], dtype=object)}), input_context)

    @property
    def tokenizer(self):
        from pipeline.tokenizer import InGraphTokenizer, read_model

        if self._tokenizer is None:
            # Room for bos and eos: a text is at most max_sequence_length + 1 ids.
            self._tokenizer = InGraphTokenizer(read_model(self.tokenizer_path),
                                               self.cfg.model.max_sequence_length - 1)
        return self._tokenizer

    def preprocess(self, examples: dict) -> dict:
        """{"text": (batch,) strings} -> {"token_ids": [bos] tokens [eos],
        right-padded, "length"}."""
        import tensorflow as tf

        from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID

        tokens = self.tokenizer.ragged(examples["text"])
        rows = tokens.nrows()
        bos = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], tf.constant(BOS_ID, tf.int32)))
        eos = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], tf.constant(EOS_ID, tf.int32)))
        ids = tf.concat([bos, tokens, eos], axis=1)
        return {"token_ids": ids.to_tensor(default_value=PAD_ID),
                "length": tf.cast(ids.row_lengths(), tf.int32)}

    @staticmethod
    def _trim(example):
        return {"token_ids": example["token_ids"][: example["length"]]}

    def token_ids(self, split: str) -> list[np.ndarray]:
        """Every text of a split (of its sample, when it streams) as its ids
        (`[bos] tokens [eos]`), through the same in-graph tokenizer as training."""
        import tensorflow as tf

        from pipeline.input import tokenize_examples

        if split == "train" and self._train_tokens is not None:
            return self._train_tokens
        source = tf.data.Dataset.from_tensor_slices(
            {"text": np.array(self.texts[split], dtype=object)})
        data = tokenize_examples(source, self.preprocess, self._trim)
        ids = [example["token_ids"] for example in data.as_numpy_iterator()]
        if split == "train":
            self._train_tokens = ids
        return ids

    def train_dataset(self, batch_size, skip_batches=0, input_context=None):
        """Packed rows: shuffled texts concatenated and cut every
        `max_sequence_length + 1` ids, with each token's text number."""
        import tensorflow as tf

        from pipeline.input import AUTOTUNE, tokenize_examples

        t, length = self.cfg.train, self.cfg.model.max_sequence_length
        texts = tokenize_examples(self._source("train", input_context), self.preprocess,
                                  self._trim)
        if "train" not in self._streamed_splits():
            texts = texts.cache()
        texts = texts.shuffle(t.shuffle_buffer, seed=t.seed,
                              reshuffle_each_iteration=True).repeat()

        def with_segment(number, example):
            ids = example["token_ids"]
            return {"token_ids": ids,
                    "segment_ids": tf.fill(tf.shape(ids), tf.cast(number, tf.int32))}

        tokens = (texts.enumerate().map(with_segment, num_parallel_calls=AUTOTUNE)
                  .ragged_batch(64)
                  .map(lambda batch: {k: v.flat_values for k, v in batch.items()})
                  .unbatch())
        rows = tokens.batch(length + 1, drop_remainder=True)

        def split_row(row):
            ids, segments = row["token_ids"], row["segment_ids"]
            inputs = {"token_ids": ids[:-1], "segment_ids": segments[:-1]}
            # The first token of a text is not predicted from the previous text.
            targets = {"ids": ids[1:],
                       "weights": tf.cast(tf.equal(segments[1:], segments[:-1]),
                                          tf.float32)}
            return inputs, targets

        dataset = rows.map(split_row, num_parallel_calls=AUTOTUNE).batch(
            batch_size, drop_remainder=True)
        if skip_batches:
            dataset = dataset.skip(skip_batches)
        options = tf.data.Options()
        options.deterministic = True
        return dataset.with_options(options).prefetch(AUTOTUNE)

    @staticmethod
    def _finalize(batch):
        import tensorflow as tf

        from pipeline.tokenizer import PAD_ID

        ids = batch["token_ids"]
        inputs = ids[:, :-1]
        targets = ids[:, 1:]
        return ({"token_ids": inputs, "padding_mask": tf.not_equal(inputs, PAD_ID)},
                {"ids": targets,
                 "weights": tf.cast(tf.not_equal(targets, PAD_ID), tf.float32)})

    def eval_dataset(self, split, batch_size):
        """Every text on its own: `[bos] tokens` -> `tokens [eos]`, each once
        (in length buckets, not in split order)."""
        from pipeline.input import AUTOTUNE, batch_examples, tokenize_examples

        texts = tokenize_examples(self._source(split), self.preprocess, self._trim)
        if split not in self._streamed_splits():
            texts = texts.cache()
        # Bucketed: perplexity is a sum over texts, so their order does not
        # matter, and most texts are far shorter than the longest.
        return batch_examples(texts, batch_size, self.cfg.model.max_sequence_length + 1,
                              bucket=True, drop_remainder=False,
                              finalize=self._finalize).prefetch(AUTOTUNE)

    # -------------------------------------------------------------- model
    def build_model(self):
        import tensorflow as tf

        from models import CausalLanguageModel
        from pipeline.tokenizer import vocabulary_size

        m = self.cfg.model
        model = CausalLanguageModel(
            vocabulary_size=vocabulary_size(self.tokenizer_path),
            hidden_dim=m.hidden_dim, intermediate_dim=m.intermediate_dim,
            num_heads=m.num_heads, num_layers=m.num_layers, dropout=m.dropout,
            max_sequence_length=m.max_sequence_length, norm_first=m.norm_first,
            name="causal_lm")
        model({"token_ids": tf.ones((1, 4), tf.int32),
               "segment_ids": tf.zeros((1, 4), tf.int32)})
        return model

    # --------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, targets, training=True):
        import tensorflow as tf

        from models.losses import sparse_softmax_cross_entropy

        logits = model(inputs, training=training)             # (batch, T, vocab)
        ids, weights = targets["ids"], targets["weights"]       # (batch, T)
        vocab = tf.shape(logits)[-1]
        token_loss = tf.reshape(sparse_softmax_cross_entropy(
            tf.reshape(ids, [-1]), tf.reshape(logits, [-1, vocab])), tf.shape(ids))
        tokens = tf.maximum(tf.reduce_sum(weights), 1.0)
        batch = tf.cast(tf.shape(ids)[0], tf.float32)
        # Scaled so that the trainer's mean over examples is the mean over tokens.
        per_example = tf.reduce_sum(token_loss * weights, -1) * batch / tokens
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), ids),
                       tf.float32)
        return per_example, {
            "token_accuracy": tf.reduce_sum(hits * weights) / tokens * batch}

    # ------------------------------------------------------------ metrics
    def validation_step(self, model, inputs, targets):
        loss_sum, tokens, hits = self._scorer(model)(inputs, targets["ids"],
                                                     targets["weights"])
        return {"loss_sum": float(loss_sum), "tokens": int(tokens), "hits": int(hits)}

    def _scorer(self, model):
        """A compiled (summed loss, tokens, correct) of one batch, per model."""
        import tensorflow as tf

        from models.losses import sparse_softmax_cross_entropy

        if self._score.get("model") is not model:
            @tf.function(reduce_retracing=True)
            def score(inputs, ids, weights):
                logits = model(inputs, training=False)
                vocab = tf.shape(logits)[-1]
                loss = tf.reshape(sparse_softmax_cross_entropy(
                    tf.reshape(ids, [-1]), tf.reshape(logits, [-1, vocab])), tf.shape(ids))
                hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), ids),
                               tf.float32)
                return (tf.reduce_sum(loss * weights), tf.reduce_sum(weights),
                        tf.reduce_sum(hits * weights))

            self._score = {"model": model, "fn": score}
        return self._score["fn"]

    def reduce_aggregated_logs(self, state):
        tokens = max(sum(state["tokens"]), 1)
        loss = sum(state["loss_sum"]) / tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                "token_accuracy": sum(state["hits"]) / tokens}

    def prompt_ids(self, prompts: list[str]) -> tuple[np.ndarray, list[int]]:
        """`[bos]` + each prompt's ids (at most `max_sequence_length - 2`, as the
        SavedModel and the edge app cut them), right-padded: (int32 (n, width),
        the row lengths)."""
        import tensorflow as tf

        from pipeline.tokenizer import BOS_ID

        encoded = self.tokenizer.ragged(tf.constant(prompts or [""])).numpy()
        rows = [[BOS_ID] + list(ids[: self.cfg.model.max_sequence_length - 2])
                for ids in encoded]
        ids = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        return ids, [len(r) for r in rows]

    def generate(self, model, prompts: list[str], seed: int | None = None,
                 strategy: str | None = None, max_new_tokens: int | None = None,
                 ids_only: bool = False):
        """Continuations of `prompts` with the `generate.*` sampler (or
        `strategy`, e.g. "greedy"): the same seed, prompts and weights give the
        same texts at every call. With `ids_only`, each prompt's generated ids
        (at most `max_new_tokens`, cut before eos) instead of the texts."""
        import tensorflow as tf

        from pipeline.tokenizer import EOS_ID

        g = self.cfg.generate
        seed = g.seed if seed is None else seed
        ids, lengths = self.prompt_ids(prompts)
        # A row generates until the sequence is full (prompt ids are cut at
        # max_sequence_length - 2 and bos added: room for one id at least).
        max_new = max_new_tokens or g.max_new_tokens
        sampler, initial, run = self._generator(model, seed, max_new, EOS_ID,
                                                strategy or g.strategy)
        for variable, value in zip(sampler.variables, initial):
            variable.assign(value)   # the seed's first state: reproducible
        out = run(tf.constant(ids), tf.constant(ids != 0)).numpy()
        if ids_only:
            rows = [list(row[n: n + max_new]) for row, n in zip(out, lengths)]
            return [[int(i) for i in (r[: r.index(EOS_ID)] if EOS_ID in r else r)]
                    for r in rows]
        # Each row's prompt and at most max_new ids after it, cut at eos.
        return self.detokenize(row[: n + max_new] for row, n in zip(out, lengths))

    def _generator(self, model, seed, max_new, eos_id, strategy):
        """(sampler, its initial seed state, compiled generate) per model and
        seed: one graph, traced once, instead of an eager loop per token."""
        import tensorflow as tf

        from models.causal_lm import make_sampler

        key = (id(model), seed, max_new, strategy)
        if key not in self._generate:
            g = self.cfg.generate
            sampler = make_sampler(strategy, g.temperature, g.top_k, g.top_p, seed=seed)
            initial = [variable.numpy() for variable in sampler.variables]
            run = tf.function(lambda ids, mask: model.generate(ids, mask, max_new, eos_id,
                                                               sampler),
                              reduce_retracing=True)
            self._generate[key] = (sampler, initial, run)
        return self._generate[key]

    def on_validation(self, writer, step, state, model=None):
        import tensorflow as tf

        if model is None:
            return
        samples = self.generate(model, self.cfg.generate.prompts)
        rows = [f"| {p!r} | {s} |" for p, s in zip(self.cfg.generate.prompts, samples)]
        with writer.as_default(step=step):
            tf.summary.text("sample_generations", "| prompt | text |\n|---|---|\n"
                            + "\n".join(rows))

    # ------------------------------------------------ test, baseline, report
    def evaluate(self, model, baseline=True):
        """Test perplexity of the model, beside unigram and add-one bigram
        models on the same test tokens; sample generations."""
        from pipeline.trainer import validate

        start, log = time.time(), self.log
        data = self.eval_dataset("test", self.cfg.train.global_batch_size)
        metrics, _ = validate(self, model, data)
        g = self.cfg.generate
        samples = self.generate(model, g.prompts)
        test = {"perplexity": metrics["perplexity"], "loss": metrics["loss"],
                "token_accuracy": metrics["token_accuracy"],
                "texts": self.num_examples("test"),
                "samples": [{"prompt": p, "text": s} for p, s in zip(g.prompts, samples)],
                "sampler": {"strategy": g.strategy, "temperature": g.temperature,
                            "top_k": g.top_k, "top_p": g.top_p, "seed": g.seed,
                            "max_new_tokens": g.max_new_tokens}}
        log(f"[test] model perplexity {test['perplexity']:.2f} on "
            f"{test['texts']:,} texts ({time.time() - start:.1f}s)")
        for p, s in zip(g.prompts, samples):
            log(f"[sample] {p!r} -> {s!r}")
        # The export's reference: greedy continuations of test prompts, which the
        # SavedModel and every TFLite variant are compared with.
        prompts = agreement_prompts(self.texts["test"])
        reference = {"prompts": prompts, "greedy_ids": [
            ids for i in range(0, len(prompts), 64) for ids in self.generate(
                model, prompts[i:i + 64], strategy="greedy",
                max_new_tokens=AGREEMENT_TOKENS, ids_only=True)]}
        result = {"test": test, "text": "fortunes (TFDS)", "reference": reference}
        if baseline:
            from pipeline.tokenizer import vocabulary_size

            for split in self._streamed_splits():
                if split in ("train", "test"):
                    log(f"[baseline] {split}: a seeded sample of {len(self.texts[split]):,} "
                        f"of {self.corpus.num_examples(split):,} texts "
                        "(data.sample_examples)")
            result["baselines"] = ngram_baselines(
                self.token_ids("train"), self.token_ids("test"),
                vocabulary_size(self.tokenizer_path))
            for name, b in result["baselines"].items():
                log(f"[baseline] {name}: perplexity {b['perplexity']:.2f}")
        return result

    def summary_lines(self, metrics):
        test = metrics["test"]
        lines = [f"  test perplexity {test['perplexity']:.2f}   (Transformer, "
                 f"{metrics['training']['parameters']:,} parameters)"]
        baselines = metrics.get("baselines", {})
        for name, b in baselines.items():
            lines.append(f"  test perplexity {b['perplexity']:.2f}   "
                         f"(baseline: {name.replace('_', ' ')})")
        if baselines:
            best = min(b["perplexity"] for b in baselines.values())
            verdict = "beats" if test["perplexity"] < best else "does NOT beat"
            lines.append(f"  => the Transformer {verdict} the best baseline "
                         f"(perplexity {test['perplexity']:.2f} against {best:.2f})")
        return lines

    def artifact_descriptions(self):
        return {"tokenizer": "spm.model"}


def ngram_baselines(train: list[np.ndarray], test: list[np.ndarray],
                    vocabulary_size: int) -> dict:
    """Perplexity of an add-one unigram and an add-one bigram model counted on
    the train texts' ids, on the test texts' targets (every id after bos, eos
    included): the tokens the Transformer's test perplexity is over."""
    unigram = np.ones(vocabulary_size, np.float64)
    bigram: dict[tuple[int, int], int] = {}
    context = np.zeros(vocabulary_size, np.float64)
    for ids in train:
        ids = ids.tolist()
        for previous, token in zip(ids[:-1], ids[1:]):
            unigram[token] += 1
            context[previous] += 1
            bigram[(previous, token)] = bigram.get((previous, token), 0) + 1
    unigram_p = unigram / unigram.sum()
    nll = {"unigram": 0.0, "bigram_add_one": 0.0}
    tokens = 0
    for ids in test:
        ids = ids.tolist()
        for previous, token in zip(ids[:-1], ids[1:]):
            nll["unigram"] -= math.log(unigram_p[token])
            nll["bigram_add_one"] -= math.log(
                (bigram.get((previous, token), 0) + 1) / (context[previous] + vocabulary_size))
            tokens += 1
    methods = {"unigram": "token frequencies of the train split, add-one",
               "bigram_add_one": "bigram counts of the train split, add-one (Laplace)"}
    return {name: {"perplexity": math.exp(value / max(tokens, 1)), "tokens": tokens,
                   "method": methods[name]} for name, value in nll.items()}


__all__ = ["AGREEMENT_TOKENS", "LanguageModelingTask", "agreement_prompts", "ngram_baselines"]
