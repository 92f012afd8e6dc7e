"""TF Serving warm-up requests: `assets.extra/tf_serving_warmup_requests`.

TF Serving replays every record of this TFRecord file (each a serialized
`tensorflow.serving.PredictionLog`) through the model when it loads a version,
before the version becomes AVAILABLE, so the first real requests do not pay for
graph optimization and lazy kernel initialization. The records written here are
PredictRequests on the `serving_default` signature built from real validation
texts: one request per text at batch 1, and one request with all texts (the
batch sizes clients send most).

    python -m export.warmup <saved model dir> --texts_file texts.txt

writes the file into an existing SavedModel (one text per line).
"""

from __future__ import annotations

import argparse
import os
import sys

WARMUP_FILE = "tf_serving_warmup_requests"
# TF Serving reads at most this many warm-up records (servables/tensorflow/util.h).
MAX_WARMUP_RECORDS = 1000


def warmup_path(saved_model_dir: str) -> str:
    return os.path.join(saved_model_dir, "assets.extra", WARMUP_FILE)


def build_warmup_logs(texts: list[str], model_name: str,
                      signature_name: str = "serving_default",
                      input_key: str = "text") -> list:
    """PredictionLogs with PredictRequests: each text alone, then all of them."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    if not texts:
        raise ValueError("warm-up needs at least one text, got an empty list")
    batches = [[t] for t in texts] + ([list(texts)] if len(texts) > 1 else [])
    if len(batches) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(batches)} warm-up records; TF Serving reads at most "
                         f"{MAX_WARMUP_RECORDS}: pass fewer texts")
    logs = []
    for batch in batches:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature_name
        request.inputs[input_key].CopyFrom(tf.make_tensor_proto(
            [t.encode("utf-8") for t in batch], dtype=tf.string, shape=[len(batch)]))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup_requests(saved_model_dir: str, texts: list[str], model_name: str,
                          signature_name: str = "serving_default",
                          input_key: str = "text") -> str:
    """Writes assets.extra/tf_serving_warmup_requests; returns its path."""
    import tensorflow as tf

    texts = [str(t) for t in texts]
    logs = build_warmup_logs(texts, model_name, signature_name, input_key)
    path = warmup_path(saved_model_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path: str) -> list:
    """The PredictionLogs of a warm-up file (raises ValueError if one does not parse)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for i, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except Exception as err:  # noqa: BLE001  protobuf's DecodeError
            raise ValueError(f"{path}: record {i} is not a PredictionLog: {err}") from None
        logs.append(log)
    return logs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.warmup",
        description="Write TF Serving warm-up requests into a SavedModel's assets.extra/.")
    parser.add_argument("saved_model_dir", help="a version directory, e.g. "
                        "artifacts/text_classification/serving/text_classifier/1")
    parser.add_argument("--texts_file", required=True, help="UTF-8 text file, one text a line")
    parser.add_argument("--model_name", default="text_classifier")
    parser.add_argument("--max_texts", type=int, default=16)
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.saved_model_dir, "saved_model.pb")):
        print(f"error: no saved_model.pb in {args.saved_model_dir}", file=sys.stderr)
        return 2
    with open(args.texts_file, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f if line.strip()][:args.max_texts]
    path = write_warmup_requests(args.saved_model_dir, texts, args.model_name)
    print(f"wrote {path} ({len(texts)} texts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
