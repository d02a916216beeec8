"""DIN, DIEN and SIM (sim_tf.models.models) and their losses."""

MODEL_TYPES = ("sim", "dien", "din")  # here, so that listing them does not import TensorFlow
GSU_KINDS = ("soft", "hard", "eta", "sdim", "twin")  # SIM's search unit (--gsu): its own two, then its successors
