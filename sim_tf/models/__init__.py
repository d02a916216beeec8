"""DIN, DIEN and SIM (sim_tf.models.models) and their losses."""

MODEL_TYPES = ("sim", "dien", "din")  # here, so that listing them does not import TensorFlow
GSU_KINDS = ("soft", "hard", "eta", "sdim", "twin")  # SIM's search unit (--gsu): its own two, then its successors
ATTENTION_KINDS = ("dot", "din")  # the target attention's score (layers.core.AttentionPooling)
MAX_SDIM_BITS = 31  # SDIM's rounds x bits: one item feature's code is an int32 (layers.long_sequence)
