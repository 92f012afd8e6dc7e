"""Build a genuine tiny edge bundle WITHOUT the pipeline (test helper for tests/edge).

    python tests/edge/make_tiny_bundle.py OUT_DIR

Writes OUT_DIR/bundle/{model.tflite, spm.model, labels.txt, manifest.json} following the
export contract, and OUT_DIR/reference.json with the Keras model's probabilities on sample
texts (tokenized independently of edge/app.py), so tests can check that the TFLite bundle run
by the edge app predicts what the Keras model predicts.

Data: WordNet noun glosses (/usr/share/wordnet/data.noun, Debian package wordnet-base),
3 lexicographer classes. Runs in its own process: it imports tensorflow, the edge app must not.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

WORDNET = Path("/usr/share/wordnet/data.noun")
CLASSES = {"05": "noun.animal", "06": "noun.artifact", "20": "noun.plant"}
PER_CLASS = 150
SEQ_LEN = 16
VOCAB = 200
SEED = 1234


def read_glosses() -> tuple[list[str], list[int]]:
    texts: list[str] = []
    labels: list[int] = []
    counts = {k: 0 for k in CLASSES}
    order = list(CLASSES)
    with WORDNET.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" ") or "|" not in line:
                continue  # licence header
            fields = line.split(" ", 3)
            lex = fields[1]
            if lex not in CLASSES or counts[lex] >= PER_CLASS:
                continue
            gloss = line.split("|", 1)[1].strip()
            gloss = gloss.split(";")[0].strip()  # the definition, without examples
            if not gloss:
                continue
            counts[lex] += 1
            texts.append(gloss)
            labels.append(order.index(lex))
            if all(c >= PER_CLASS for c in counts.values()):
                break
    return texts, labels


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(out_dir: str) -> None:
    import numpy as np
    import sentencepiece as spm

    out = Path(out_dir)
    bundle = out / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)

    texts, labels = read_glosses()
    rng = np.random.default_rng(SEED)

    # -- tokenizer
    model_io = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model_io, vocab_size=VOCAB, model_type="unigram",
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2,
    )
    (bundle / "spm.model").write_bytes(model_io.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model_io.getvalue())

    def encode(text: str) -> np.ndarray:  # the contract, written independently of edge/app.py
        ids = sp.encode(text, out_type=int)[:SEQ_LEN]
        return np.array(ids + [0] * (SEQ_LEN - len(ids)), dtype=np.int32)

    x = np.stack([encode(t) for t in texts])
    y = np.array(labels, dtype=np.int32)

    # -- tiny Keras model
    import tensorflow as tf
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.Sequential([
        keras.Input((SEQ_LEN,), dtype="int32", name="token_ids"),
        keras.layers.Embedding(sp.get_piece_size(), 16),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(len(CLASSES), activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=25, batch_size=32, verbose=0, shuffle=True)

    # -- SavedModel via ExportArchive, then TFLite with dynamic-range quantization
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda token_ids: {"probabilities": model(token_ids, training=False)},
        input_signature=[tf.TensorSpec((None, SEQ_LEN), tf.int32, name="token_ids")],
    )
    saved = out / "saved_model"
    archive.write_out(str(saved), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    (bundle / "model.tflite").write_bytes(converter.convert())

    (bundle / "labels.txt").write_text("".join(v + "\n" for v in CLASSES.values()), encoding="utf-8")
    files = {name: sha256(bundle / name) for name in ("model.tflite", "spm.model", "labels.txt")}
    manifest = {
        "format_version": 1, "task": "text_classification", "model": "model.tflite", "tokenizer": "spm.model",
        "labels": "labels.txt", "max_sequence_length": SEQ_LEN, "pad_id": 0, "input_name": "token_ids",
        "output_name": "probabilities", "variant": "dynamic_range", "pipeline_version": "0.1.0", "files": files,
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    # -- reference predictions of the Keras model on a sample (training texts + a few unseen ones)
    sample_idx = rng.choice(len(texts), size=40, replace=False)
    sample = [texts[i] for i in sample_idx] + [
        "a large wild cat with a striped coat", "a tall tree with needles and cones",
        "a machine for cutting metal", "", "   ", "Größe der Blätter — ünïcødé 日本語",
    ]
    probs = model.predict(np.stack([encode(t) for t in sample]), verbose=0)
    (out / "reference.json").write_text(json.dumps({
        "texts": sample,
        "probabilities": probs.astype(float).tolist(),
        "labels": list(CLASSES.values()),
        "train_accuracy": float(model.evaluate(x, y, verbose=0)[1]),
    }, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
