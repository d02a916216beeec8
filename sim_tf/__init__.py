"""sim-tf: SIM, DIEN and DIN click-through-rate models on TensorFlow 2 / Keras 3 and tf.distribute."""

import os as _os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lines) buries the tool's own output;
# users can still set TF_CPP_MIN_LOG_LEVEL=0 to see it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
