"""The shipped TF Serving configs parse with TF Serving's protos; broken ones fail."""

import os

import pytest
from google.protobuf import text_format

from serving.config_protos import (
    ConfigFileError,
    read_batching_parameters,
    read_model_server_config,
    read_monitoring_config,
)
from tests.conftest import ROOT

SERVING = os.path.join(ROOT, "serving")


def test_models_config_parses_with_model_server_config_pb2():
    from tensorflow_serving.config import model_server_config_pb2

    with open(os.path.join(SERVING, "models.config"), encoding="utf-8") as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "text_classifier" and model.base_path == "/models/text_classifier"
    assert model.model_platform == "tensorflow"
    assert dict(model.version_labels) == {"stable": 1, "canary": 2}
    assert set(model.model_version_policy.specific.versions) == {1, 2}
    assert read_model_server_config(os.path.join(SERVING, "models.config")) == config


def test_monitoring_config_enables_prometheus():
    config = read_monitoring_config(os.path.join(SERVING, "monitoring.config"))
    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"
    with open(os.path.join(SERVING, "prometheus.yml"), encoding="utf-8") as f:
        assert f"metrics_path: {config.prometheus_config.path}" in f.read()


def test_batching_parameters_are_consistent():
    params = read_batching_parameters(os.path.join(SERVING, "batching_parameters.txt"))
    assert params.max_batch_size.value == 64
    assert list(params.allowed_batch_sizes)[-1] == params.max_batch_size.value
    assert params.num_batch_threads.value >= 1 and params.batch_timeout_micros.value > 0


@pytest.mark.parametrize("reader,text,message", [
    (read_model_server_config, 'model_config_list { config { name: "m" } }', "base_path"),
    (read_model_server_config, "model_config_list { config { nmae: 'm' } }", "nmae"),
    (read_monitoring_config, "prometheus_config { enable: maybe }", "enable"),
    (read_batching_parameters, "max_batch_size: 8", "max_batch_size"),
    (read_batching_parameters, "max_batch_size { value: 8 } allowed_batch_sizes: 4",
     "must equal max_batch_size"),
])
def test_broken_configs_are_rejected_with_a_message(tmp_path, reader, text, message):
    path = tmp_path / "broken.config"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=message):
        reader(str(path))


def test_dockerfile_pins_the_tf_serving_release_and_copies_the_configs():
    with open(os.path.join(SERVING, "Dockerfile"), encoding="utf-8") as f:
        dockerfile = f.read()
    assert "ARG TF_SERVING_VERSION=2.21.0" in dockerfile
    assert "FROM tensorflow/serving:${TF_SERVING_VERSION}" in dockerfile
    for name in ("models.config", "batching_parameters.txt", "monitoring.config",
                 "healthcheck.sh"):
        assert f"serving/{name}" in dockerfile
        assert os.path.isfile(os.path.join(SERVING, name))
    for flag in ("--model_config_file=/models/config/models.config",
                 "--batching_parameters_file=/models/config/batching_parameters.txt",
                 "--monitoring_config_file=/models/config/monitoring.config",
                 "--enable_batching=true", "--rest_api_port=8501", "--port=8500"):
        assert flag in dockerfile
    assert "HEALTHCHECK" in dockerfile


def test_serving_package_imports_no_other_package():
    import ast

    for name in os.listdir(SERVING):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(SERVING, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for module in modules:
                assert module.split(".")[0] not in {"pipeline", "models", "export", "edge"}, \
                    f"serving/{name} imports {module}"
