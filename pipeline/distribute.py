"""tf.distribute strategy from the runtime config, and who is the chief.

Multi-worker training reads the cluster from TF_CONFIG, e.g. for worker 1 of 2:

  TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
              "task": {"type": "worker", "index": 1}}'

Worker 0 (or a task of type "chief") is the chief: it writes TensorBoard,
checkpoints and, after training, evaluates and exports. The strategy must be
created before TensorFlow runs any op, so entry points call `get_strategy`
first.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from pipeline.config import ConfigError, RuntimeConfig


def configure_devices(cfg: RuntimeConfig) -> None:
    """Splits the CPU into logical devices; must run before TF uses devices."""
    if cfg.logical_cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()]
                * cfg.logical_cpu_devices)
        except RuntimeError as err:
            raise RuntimeError(
                "runtime.logical_cpu_devices must be applied before TensorFlow "
                "initializes its devices: create the strategy first") from err


def get_strategy(cfg: RuntimeConfig) -> tf.distribute.Strategy:
    if cfg.strategy == "multi_worker_mirrored":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError(
                "config key 'runtime.strategy' = 'multi_worker_mirrored' needs the "
                "TF_CONFIG environment variable on every worker; "
                "'python -m pipeline launch --workers N <config>' sets it on one host")
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=cfg.collective_timeout_seconds)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    configure_devices(cfg)
    if cfg.strategy == "default":
        return tf.distribute.get_strategy()
    if cfg.strategy == "one_device":
        device = cfg.devices[0] if cfg.devices else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if cfg.strategy == "mirrored":
        devices = list(cfg.devices) or None
        if devices is None:
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(
            devices=devices,
            cross_device_ops=tf.distribute.ReductionToOneDevice())
    if cfg.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=cfg.tpu_address or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"config key 'runtime.strategy' = {cfg.strategy!r}: unknown")


def worker_info(strategy: tf.distribute.Strategy) -> tuple[bool, int, int]:
    """(is_chief, worker index, number of workers) of this process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True, 0, 1
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    jobs = resolver.cluster_spec().as_dict()
    workers = sum(len(jobs.get(j, [])) for j in ("chief", "worker"))
    if "chief" in jobs:
        return task_type == "chief", task_id if task_type == "chief" else task_id + 1, workers
    return task_type in (None, "worker") and task_id == 0, task_id, workers


def tf_config_for(addresses: list[str], index: int) -> str:
    """The TF_CONFIG of worker `index` in a cluster of `addresses`."""
    return json.dumps({"cluster": {"worker": addresses},
                       "task": {"type": "worker", "index": index}})
