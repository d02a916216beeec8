"""sim-tf: SIM, DIEN and DIN click-through-rate models on TensorFlow 2 / Keras 3 and tf.distribute.

TensorFlow's log level for the command line is set in sim_tf/cli.py; importing the library leaves it alone.
"""

__version__ = "0.1.0"
