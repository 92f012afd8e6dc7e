"""The export's TF Serving warm-up file: real validation texts, replayable requests."""

import os

import grpc
import pytest

from export.warmup import read_warmup_requests, warmup_path


def test_warmup_file_holds_predict_requests_of_validation_texts(saved_model_dir,
                                                                debug_splits, model_name):
    import tensorflow as tf

    logs = read_warmup_requests(warmup_path(saved_model_dir))
    texts = [str(t) for t in debug_splits.texts["validation"][:16]]
    assert len(logs) == len(texts) + 1            # each text alone, then all together
    sent = []
    for log in logs:
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == model_name
        assert request.model_spec.signature_name == "serving_default"
        assert list(request.inputs) == ["text"]
        sent.append([b.decode() for b in tf.make_ndarray(request.inputs["text"])])
    assert sent[:-1] == [[t] for t in texts] and sent[-1] == texts


@pytest.mark.slow
def test_every_warmup_record_replays_through_the_local_server(local_server,
                                                              saved_model_dir):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    logs = read_warmup_requests(warmup_path(saved_model_dir))
    with grpc.insecure_channel(f"127.0.0.1:{local_server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for log in logs:
            request = log.predict_log.request
            response = stub.Predict(request, timeout=60)
            rows = request.inputs["text"].tensor_shape.dim[0].size
            assert response.outputs["label"].tensor_shape.dim[0].size == rows
            assert response.outputs["probabilities"].tensor_shape.dim[0].size == rows
    # The server replayed them itself before serving each version.
    assert local_server.log_text().count(f"{len(logs)} warm-up requests replayed") == 2


def test_warmup_rejects_an_empty_text_list(tmp_path):
    from export.warmup import text_requests, write_warmup_requests

    with pytest.raises(ValueError, match="at least one text"):
        text_requests([])
    with pytest.raises(ValueError, match="at least one request"):
        write_warmup_requests(str(tmp_path), [], "m")
    assert not os.path.exists(warmup_path(str(tmp_path)))
