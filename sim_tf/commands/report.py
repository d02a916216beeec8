"""sim-tf report RESULTS_DIR: one PNG with the training loss, test AUC/GAUC per evaluation and the ROC curve.

Reads RESULTS_DIR/log.json (the trainer's JSON-lines log); needs matplotlib (`pip install sim-tf[plot]`).
"""

from __future__ import annotations

import os

from absl import flags

from sim_tf.errors import UserError
from sim_tf.train.run_log import read_log

FLAGS = flags.FLAGS
flags.DEFINE_string("log_filename", "log.json", "Name of the JSON-lines log in RESULTS_DIR.")
flags.DEFINE_string("output", "", "PNG to write (default: RESULTS_DIR/report.png).")


def plot(records: list[dict], output: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("`sim-tf report` needs matplotlib: pip install 'sim-tf[plot]'") from None
    # A record without the keys a plot needs (another tool's log, a newer or older format) is left out.
    steps = [r for r in records if r.get("type") == "step" and {"step", "train_loss"} <= set(r)]
    evals = [r for r in records if r.get("type") == "eval" and {"step", "test_auc", "test_gauc"} <= set(r)]
    if not steps and not evals:
        raise UserError("the log has no training steps or evaluations to plot")
    figure, (loss_ax, auc_ax, roc_ax) = plt.subplots(1, 3, figsize=(15, 4.5))
    if steps:
        loss_ax.plot([r["step"] for r in steps], [r["train_loss"] for r in steps], color="tab:blue")
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    if evals:
        x = [r["step"] for r in evals]
        auc_ax.plot(x, [r["test_auc"] for r in evals], marker="o", label="test AUC")
        auc_ax.plot(x, [r["test_gauc"] for r in evals], marker="s", label="test GAUC")
        auc_ax.legend()
        last = evals[-1]
        if isinstance(last.get("roc"), list) and len(last["roc"]) == 2:
            fpr, tpr = last["roc"]
            roc_ax.plot(fpr, tpr, label=f"AUC {last['test_auc']:.4f}")
            roc_ax.legend(loc="lower right")
    auc_ax.set(title="test AUC / GAUC", xlabel="step")
    roc_ax.plot([0, 1], [0, 1], color="0.7", linestyle="--")
    roc_ax.set(title="ROC (last evaluation)", xlabel="false positive rate", ylabel="true positive rate",
               xlim=(0, 1), ylim=(0, 1))
    figure.tight_layout()
    partial = f"{output}.partial-{os.getpid()}.png"
    try:
        figure.savefig(partial, dpi=100)
        os.replace(partial, output)  # the picture appears only when complete
    finally:
        plt.close(figure)
        if os.path.exists(partial):
            os.remove(partial)
    return output


def main(argv):
    if len(argv) != 2:
        raise UserError("usage: sim-tf report RESULTS_DIR [--output report.png]")
    results = argv[1]
    output = FLAGS.output or os.path.join(results, "report.png")
    # skip_bad_lines: the last line of a killed run's log may be cut short.
    plot(read_log(os.path.join(results, FLAGS.log_filename), skip_bad_lines=True), output)
    print(f"wrote {output}")
