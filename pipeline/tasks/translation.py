"""Translation: German text in, English text out (the encoder-decoder Transformer).

Data: the TFDS builder `trans_de_en` over the Ding dictionary of the Debian
package `trans-de-en` (`pipeline/datasets/trans_de_en.py`: sentence-like
pairs, split by a stable hash of the German side). Assets: one SentencePiece
model shared by both languages, trained on the train split's German and
English sides only. Model: `models.Translator` (a `TransformerEncoderBackbone`
and a stack of `TransformerDecoder` blocks with cross-attention). Loss:
teacher forcing, label-smoothed cross-entropy over the real target tokens.
Metrics: validation BLEU of greedy decoding (picks the best checkpoint),
token accuracy and loss; test corpus BLEU and chrF (sacrebleu) of greedy
decoding and of beam search (`generate.num_beams`, `generate.length_penalty`;
`Translator.beam_decode`) beside two baselines on the same split: copying the
source, and word-by-word translation with the dictionary's single-word entries.
"""

from __future__ import annotations

import collections
import re
import time

import numpy as np

from pipeline.config import check
from pipeline.files import write_json
from pipeline.tasks import register_task
from pipeline.tasks.base import Task, sample_indices

SPLITS = ("train", "validation", "test")
SAMPLES_IN_TENSORBOARD = 5


@register_task("translation")
class TranslationTask(Task):
    best_metric = "bleu"
    best_direction = "max"
    log_names = {"token_accuracy": "tok-acc"}
    supports_data_service = True

    @classmethod
    def validate_config(cls, cfg) -> None:
        check(cfg.data.source == "trans_de_en", "data.source", cfg.data.source,
              "'trans_de_en' for task 'translation'")
        check(not cfg.pretrain.enabled, "pretrain.enabled", cfg.pretrain.enabled,
              "false for task 'translation' (no masked-LM pre-training yet)")
        check(cfg.model.max_sequence_length >= 4, "model.max_sequence_length",
              cfg.model.max_sequence_length, ">= 4 for task 'translation'")
        check(cfg.generate.num_beams >= 1, "generate.num_beams", cfg.generate.num_beams,
              ">= 1 (1 = greedy only)")
        check(cfg.generate.length_penalty >= 0, "generate.length_penalty",
              cfg.generate.length_penalty, ">= 0")

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        self.pairs: dict[str, dict[str, list[str]]] | None = None
        self.tokenizer_path: str | None = None
        self._tokenizer = None
        self._loss = None
        self._decode = {}

    # --------------------------------------------------------------- data
    def prepare(self, strategy=None) -> None:
        """The TFDS data set (prepared once), its data card, the tokenizer."""
        import tensorflow_datasets as tfds

        from pipeline.datasets.trans_de_en import (
            APT_PACKAGE,
            TransDeEn,
            data_card,
            format_data_card,
        )
        from pipeline.datasets.wordnet_topics import require_file
        from pipeline.sources import tfds_data_dir
        from pipeline.tokenizer import train_sentencepiece

        if self.pairs is not None:
            return
        cfg, log = self.cfg, self.log
        d = cfg.data
        require_file(d.dictionary_path, APT_PACKAGE)
        tfds.disable_progress_bar()
        builder = TransDeEn(path=d.dictionary_path, log=log,
                            data_dir=tfds_data_dir(d, cfg.runtime.artifacts_root))
        log(f"[data] preparing TFDS trans_de_en from {d.dictionary_path} into "
            f"{builder.data_dir} (cached after the first run)")
        builder.download_and_prepare()
        self.pairs = {}
        for split in SPLITS:
            spec = f"{split}[:{d.max_examples_per_split}]" if d.max_examples_per_split \
                else split
            rows = tfds.as_numpy(builder.as_dataset(split=spec, shuffle_files=False))
            de, en = [], []
            for row in rows:
                de.append(row["de"].decode("utf-8"))
                en.append(row["en"].decode("utf-8"))
            self.pairs[split] = {"de": de, "en": en}
        card = data_card({s: list(zip(p["de"], p["en"])) for s, p in self.pairs.items()},
                         d.dictionary_path)
        write_json(self.path("data_card.json"), card)
        log(format_data_card(card))
        train = self.pairs["train"]
        self.tokenizer_path = train_sentencepiece(
            train["de"] + train["en"], cfg.tokenizer, self.path("tokenizer"), log=log)

    def num_examples(self, split: str) -> int:
        return len(self.pairs[split]["de"])

    def sample(self, split, max_examples=0, seed=None):
        de, en = self.pairs[split]["de"], self.pairs[split]["en"]
        return [{"de": de[i], "en": en[i]}
                for i in sample_indices(len(de), max_examples, seed)]

    def _source(self, split):
        import tensorflow as tf

        p = self.pairs[split]
        return tf.data.Dataset.from_tensor_slices(
            {"de": np.array(p["de"], dtype=object), "en": np.array(p["en"], dtype=object)})

    @property
    def tokenizer(self):
        from pipeline.tokenizer import InGraphTokenizer, read_model

        if self._tokenizer is None:
            self._tokenizer = InGraphTokenizer(read_model(self.tokenizer_path),
                                               self.cfg.model.max_sequence_length)
        return self._tokenizer

    def preprocess(self, examples: dict) -> dict:
        """{"de", "en"}: (batch,) strings -> source ids, and the target as the
        decoder input (bos + tokens) and the labels (tokens + eos), each
        right-padded, with their lengths."""
        import tensorflow as tf

        from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID

        length = self.cfg.model.max_sequence_length
        source = self.tokenizer.ragged(examples["de"])
        target = self.tokenizer.ragged(examples["en"])[:, : length - 1]
        rows = target.nrows()
        bos = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], tf.constant(BOS_ID, tf.int32)))
        eos = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], tf.constant(EOS_ID, tf.int32)))
        target_in = tf.concat([bos, target], axis=1)
        return {"source_ids": source.to_tensor(default_value=PAD_ID),
                "source_length": tf.cast(source.row_lengths(), tf.int32),
                "target_in": target_in.to_tensor(default_value=PAD_ID),
                "target_out": tf.concat([target, eos], axis=1).to_tensor(
                    default_value=PAD_ID),
                "target_length": tf.cast(target_in.row_lengths(), tf.int32)}

    @staticmethod
    def _trim(example):
        return {"source_ids": example["source_ids"][: example["source_length"]],
                "target_in": example["target_in"][: example["target_length"]],
                "target_out": example["target_out"][: example["target_length"]]}

    @staticmethod
    def _finalize(batch):
        import tensorflow as tf

        from pipeline.tokenizer import PAD_ID

        return ({"source_ids": batch["source_ids"],
                 "source_padding_mask": tf.not_equal(batch["source_ids"], PAD_ID),
                 "target_ids": batch["target_in"],
                 "target_padding_mask": tf.not_equal(batch["target_in"], PAD_ID)},
                batch["target_out"])

    def train_dataset(self, batch_size, skip_batches=0, input_context=None):
        from pipeline.input import make_train_dataset

        return make_train_dataset(self._source("train"), self.preprocess, self.cfg,
                                  batch_size, skip_batches=skip_batches,
                                  input_context=input_context, trim=self._trim,
                                  finalize=self._finalize)

    def eval_dataset(self, split, batch_size):
        from pipeline.input import make_eval_dataset

        return make_eval_dataset(self._source(split), self.preprocess, self.cfg,
                                 batch_size, trim=self._trim, finalize=self._finalize)

    # -------------------------------------------------------------- model
    def build_model(self):
        import tensorflow as tf

        from models import Translator
        from pipeline.tokenizer import vocabulary_size

        m = self.cfg.model
        model = Translator(
            vocabulary_size=vocabulary_size(self.tokenizer_path),
            hidden_dim=m.hidden_dim, intermediate_dim=m.intermediate_dim,
            num_heads=m.num_heads, num_encoder_layers=m.num_layers,
            num_decoder_layers=m.num_layers, dropout=m.dropout,
            max_source_length=m.max_sequence_length,
            max_target_length=m.max_sequence_length, norm_first=m.norm_first,
            name="translator")
        ones = tf.ones((1, 4), tf.bool)
        model({"source_ids": tf.ones((1, 4), tf.int32), "source_padding_mask": ones,
               "target_ids": tf.ones((1, 4), tf.int32), "target_padding_mask": ones})
        return model

    # --------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, targets, training=True):
        import keras
        import tensorflow as tf

        if self._loss is None:
            self._loss = keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=self.cfg.train.label_smoothing,
                reduction=None)
        logits = model(inputs, training=training)               # (batch, T, vocab)
        mask = tf.cast(inputs["target_padding_mask"], tf.float32)
        token_loss = self._loss(tf.one_hot(targets, tf.shape(logits)[-1]), logits)
        tokens = tf.maximum(tf.reduce_sum(mask), 1.0)
        batch = tf.cast(tf.shape(targets)[0], tf.float32)
        # Scaled so that the trainer's mean over examples is the mean over tokens.
        per_example = tf.reduce_sum(token_loss * mask, -1) * batch / tokens
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets),
                       tf.float32)
        return per_example, {"token_accuracy": tf.reduce_sum(hits * mask) / tokens * batch}

    # ------------------------------------------------------------ metrics
    def greedy(self, model, inputs) -> np.ndarray:
        """Greedy translations (token ids after bos, zeros after eos) of a batch."""
        import tensorflow as tf

        from pipeline.tokenizer import BOS_ID, EOS_ID

        key = ("greedy", id(model))
        if key not in self._decode:
            self._forget_other_models(model)
            self._decode[key] = tf.function(
                lambda ids, mask: model.greedy_decode(ids, mask, BOS_ID, EOS_ID))
        return self._decode[key](inputs["source_ids"], inputs["source_padding_mask"]).numpy()

    def _forget_other_models(self, model):
        """Compiled decoders hold their model: keep only this model's."""
        self._decode = {k: v for k, v in self._decode.items() if k[1] == id(model)}


    def beam(self, model, inputs) -> np.ndarray:
        """Beam-search translations (`generate.num_beams`,
        `generate.length_penalty`) of a batch, in `greedy`'s layout."""
        import tensorflow as tf

        from pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID

        g = self.cfg.generate
        key = ("beam", id(model))
        if key not in self._decode:
            self._forget_other_models(model)
            self._decode[key] = tf.function(
                lambda ids, mask: model.beam_decode(ids, mask, BOS_ID, EOS_ID, g.num_beams,
                                                    g.length_penalty, pad_id=PAD_ID))
        return self._decode[key](inputs["source_ids"], inputs["source_padding_mask"]).numpy()

    def validation_step(self, model, inputs, targets):
        import keras

        logits = model(inputs, training=False)
        mask = inputs["target_padding_mask"].numpy()
        loss = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(
            targets, logits, from_logits=True))
        hits = np.argmax(logits.numpy(), -1) == targets.numpy()
        return {"loss_sum": [float((loss * mask).sum())], "tokens": [int(mask.sum())],
                "hits": [int((hits & mask).sum())],
                "hypotheses": self.detokenize(self.greedy(model, inputs))}

    def aggregate_logs(self, state, step_logs):
        if state is None:
            return {k: list(v) for k, v in step_logs.items()}
        for k, v in step_logs.items():
            state[k].extend(v)
        return state

    def reduce_aggregated_logs(self, state):
        tokens = max(sum(state["tokens"]), 1)
        references = self.pairs["validation"]["en"][: len(state["hypotheses"])]
        scores = corpus_scores(state["hypotheses"], references)
        return {"loss": sum(state["loss_sum"]) / tokens,
                "token_accuracy": sum(state["hits"]) / tokens, **scores}

    def on_validation(self, writer, step, state, model=None):
        import tensorflow as tf

        p = self.pairs["validation"]
        rows = [f"| {p['de'][i]} | {p['en'][i]} | {state['hypotheses'][i]} |"
                for i in range(min(SAMPLES_IN_TENSORBOARD, len(state["hypotheses"])))]
        with writer.as_default(step=step):
            tf.summary.text("sample_translations", "| German | reference | model |\n"
                            "|---|---|---|\n" + "\n".join(rows))

    # ------------------------------------------------ test, baseline, report
    def evaluate(self, model, baseline=True):
        """Test BLEU and chrF of greedy decoding, beside copying the source and
        word-by-word translation with the dictionary's single-word entries."""
        from pipeline.trainer import validate

        start, log = time.time(), self.log
        data = self.eval_dataset("test", self.cfg.train.global_batch_size)
        _, state = validate(self, model, data)
        hypotheses = state["hypotheses"]
        test = self.pairs["test"]
        metrics = {**corpus_scores(hypotheses, test["en"]), "decoding": "greedy",
                   "examples": len(hypotheses),
                   "samples": [{"de": test["de"][i], "reference": test["en"][i],
                                "model": hypotheses[i]} for i in range(10)]}
        log(f"[test] model BLEU {metrics['bleu']:.2f} chrF {metrics['chrf']:.2f} on "
            f"{len(hypotheses):,} sentences (greedy, {time.time() - start:.1f}s)")
        g = self.cfg.generate
        if g.num_beams > 1:
            start = time.time()
            beams = [text for inputs, _ in data
                     for text in self.detokenize(self.beam(model, inputs))]
            metrics["beam"] = {**corpus_scores(beams, test["en"]),
                               "num_beams": g.num_beams,
                               "length_penalty": g.length_penalty}
            for i, sample in enumerate(metrics["samples"]):
                sample["model_beam"] = beams[i]
            log(f"[test] model BLEU {metrics['beam']['bleu']:.2f} chrF "
                f"{metrics['beam']['chrf']:.2f} (beam search, {g.num_beams} beams, length "
                f"penalty {g.length_penalty:g}, {time.time() - start:.1f}s)")
        result = {"test": metrics, "text": "German -> English (trans_de_en)",
                  "reference": hypotheses}
        if baseline:
            lexicon = single_word_lexicon(self.cfg.data.dictionary_path)
            result["baselines"] = {
                "copy_source": {**corpus_scores(test["de"], test["en"]),
                                "method": "the German sentence as the translation"},
                "word_by_word": {**corpus_scores(
                    [word_by_word(s, lexicon) for s in test["de"]], test["en"]),
                    "method": f"each German word by its most frequent single-word "
                              f"English entry ({len(lexicon):,} words), else copied"},
            }
            for name, b in result["baselines"].items():
                log(f"[baseline] {name}: BLEU {b['bleu']:.2f} chrF {b['chrf']:.2f}")
        return result

    def summary_lines(self, metrics):
        test, lines = metrics["test"], []
        lines.append(f"  test BLEU {test['bleu']:.2f}  chrF {test['chrf']:.2f}   "
                     f"(Transformer, greedy, {metrics['training']['parameters']:,} "
                     "parameters)")
        if "beam" in test:
            b = test["beam"]
            lines.append(f"  test BLEU {b['bleu']:.2f}  chrF {b['chrf']:.2f}   "
                         f"(Transformer, beam search: {b['num_beams']} beams, length "
                         f"penalty {b['length_penalty']:g})")
        for name, b in metrics.get("baselines", {}).items():
            lines.append(f"  test BLEU {b['bleu']:.2f}  chrF {b['chrf']:.2f}   "
                         f"(baseline: {name.replace('_', ' ')})")
        best = max((b["bleu"] for b in metrics.get("baselines", {}).values()), default=None)
        if best is not None:
            verdict = "beats" if test["bleu"] > best else "does NOT beat"
            lines.append(f"  => the Transformer {verdict} the best baseline "
                         f"(BLEU {test['bleu'] - best:+.2f})")
        return lines

    def artifact_descriptions(self):
        return {"tokenizer": "spm.model (German and English)"}


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu's defaults: 13a tokenization)."""
    import sacrebleu

    return {"bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
            "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score)}


_WORD = re.compile(r"\w+|[^\w\s]")


def single_word_lexicon(path: str) -> dict[str, str]:
    """German word (lowercased) -> its most frequent single-word English entry
    among the dictionary's one-word-to-one-word entries (first alternatives)."""
    from pipeline.datasets.trans_de_en import parse_short_line

    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    with open(path, encoding="utf-8") as f:
        for line in f:
            for de, en in parse_short_line(line):
                if " " not in de and " " not in en:
                    counts[de.lower()][en] += 1
    return {de: c.most_common(1)[0][0] for de, c in counts.items()}


def word_by_word(sentence: str, lexicon: dict[str, str]) -> str:
    """Each German word replaced by its lexicon entry; others kept as they are."""
    return " ".join(lexicon.get(w.lower(), w) for w in _WORD.findall(sentence))


__all__ = ["TranslationTask", "corpus_scores", "single_word_lexicon", "word_by_word"]
