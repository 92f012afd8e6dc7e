"""tf.distribute strategy from the runtime config."""

from __future__ import annotations

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
        except RuntimeError:
            # Already initialized (e.g. a second run in one process): keep as is.
            pass


def get_strategy(cfg: RuntimeConfig) -> tf.distribute.Strategy:
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
    raise ConfigError(f"config key 'runtime.strategy' = {cfg.strategy!r}: unknown")
