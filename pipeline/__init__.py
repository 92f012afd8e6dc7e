"""Data to trained checkpoint: config, sources, tokenizer, tf.data, strategy, training."""

import os

# Quiet TensorFlow's C++ start-up logging unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
