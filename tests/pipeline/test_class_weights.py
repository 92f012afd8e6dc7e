"""train.class_weight_power: rarer classes weigh more in the loss, the mean
weight over the training examples stays 1."""

import types

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.tasks.text_classification import TextClassificationTask, class_weights


def test_weights_follow_the_power_and_keep_the_mean_at_one():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    for power in (0.0, 0.5, 1.0):
        w = class_weights(np.bincount(labels, minlength=4), 4, power)
        assert w[3] == 0.0                                   # absent class
        assert np.isclose(w[labels].mean(), 1.0)             # loss keeps its scale
        assert np.isclose(w[1] / w[0], 10.0 ** power)        # (n_0 / n_1) ** power
        assert np.isclose(w[2] / w[0], 90.0 ** power)
    counts = np.bincount(labels)                             # examples per class
    assert np.allclose(class_weights(counts, 3, 0.0), 1.0)
    balanced = class_weights(counts, 3, 1.0)                 # every class sums alike
    assert np.allclose(balanced * np.bincount(labels), balanced[0] * 90)


def test_the_loss_of_each_example_is_scaled_by_its_class_weight():
    import tensorflow as tf

    labels = np.array([0, 0, 0, 1])
    cfg = load_config(None, ["train.class_weight_power=1.0"])
    task = TextClassificationTask(cfg, log=lambda *_: None)
    task.splits = types.SimpleNamespace(num_classes=2, splits={
        "train": types.SimpleNamespace(per_class=np.bincount(labels))})
    logits = tf.constant([[2.0, -1.0], [0.5, 0.1], [-1.0, 1.0], [0.3, 0.2]])
    targets = tf.constant([0, 1, 0, 1])
    weighted, logs = task.compute_loss(lambda x, training: x, logits, targets)
    plain = tf.keras.losses.sparse_categorical_crossentropy(targets, logits,
                                                            from_logits=True)
    w = class_weights(np.bincount(labels), 2, 1.0)           # [2/3, 2]
    np.testing.assert_allclose(weighted.numpy(), plain.numpy() * w[targets.numpy()],
                               rtol=1e-6)
    assert float(logs["accuracy"]) == 1.0                    # only row 0 is right


def test_power_outside_zero_one_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.class_weight_power"):
        load_config(None, ["train.class_weight_power=2"])
