"""Input pipelines (tf.data on every backend)."""
