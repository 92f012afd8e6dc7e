"""TF Serving warm-up requests: `assets.extra/tf_serving_warmup_requests`.

TF Serving replays every record of this TFRecord file (each a serialized
`tensorflow.serving.PredictionLog`) through the model when it loads a version,
before the version becomes AVAILABLE, so the first real requests do not pay for
graph optimization and lazy kernel initialization. The records written here are
PredictRequests built by the task's export module from real validation
examples; for text, one request per text at batch 1 and one with all texts
(the batch sizes clients send most).

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


def text_requests(texts: list[str], signature_name: str = "serving_default",
                  input_key: str = "text") -> list[tuple[str, dict]]:
    """Warm-up requests of a string signature: each text alone, then all."""
    import numpy as np

    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("warm-up needs at least one text, got an empty list")
    batches = [[t] for t in texts] + ([list(texts)] if len(texts) > 1 else [])
    return [(signature_name, {input_key: np.array([t.encode("utf-8") for t in batch],
                                                  dtype=object)})
            for batch in batches]


def build_warmup_logs(requests: list[tuple[str, dict]], model_name: str) -> list:
    """PredictionLogs with one PredictRequest per (signature name, {input name:
    numpy array}) of `requests`."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    if not requests:
        raise ValueError("warm-up needs at least one request, got an empty list")
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(requests)} warm-up records; TF Serving reads at most "
                         f"{MAX_WARMUP_RECORDS}: pass fewer")
    logs = []
    for signature_name, inputs in requests:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature_name
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup_requests(saved_model_dir: str, requests: list[tuple[str, dict]],
                          model_name: str) -> str:
    """Writes assets.extra/tf_serving_warmup_requests; returns its path."""
    import tensorflow as tf

    from pipeline.files import atomic_path

    logs = build_warmup_logs(requests, model_name)
    path = warmup_path(saved_model_dir)
    with atomic_path(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
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
    path = write_warmup_requests(args.saved_model_dir, text_requests(texts),
                                 args.model_name)
    print(f"wrote {path} ({len(texts)} texts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
