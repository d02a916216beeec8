"""A model's AUC on the ``lifelong`` preset's two kinds of pairs, apart: where a search unit wins or loses.

The preset (sim_tf.data.synthetic.LifelongConfig) mixes *long-term* pairs, which only behaviours older
than the last ``recent_span`` tell apart (the long-history unit's job), and *session* pairs, which only
the order of the last few behaviours tells apart (DIEN's job in SIM, the same in every search unit). The
overall AUC adds the two, so a search unit's lead on the first can drown in the noise of the second.
This regenerates the kinds from the generator settings that ``sim-tf synthesize`` recorded in the
dataset's feature_spec.yaml and splits the AUC of ``sim-tf predict`` outputs by kind:

    sim-tf predict --model SAVED --input DATA --output soft.parquet        # test split, in file order
    python -m sim_tf.bench.lifelong_pairs --dataset_dir DATA soft.parquet eta.parquet

One JSON line per predictions file: AUC overall, on long-term pairs and on session pairs, with counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

def lifelong_config(dataset_dir: str):
    """The LifelongConfig recorded in DATASET_DIR/feature_spec.yaml (ValueError if it is not one)."""
    from sim_tf.data import synthetic
    from sim_tf.data.feature_spec import FeatureSpec

    spec = FeatureSpec.from_yaml(os.path.join(dataset_dir, "feature_spec.yaml"), check_files=False)
    recorded = dict(spec.metadata.get("generator") or {})
    if recorded.pop("kind", None) != synthetic.LIFELONG_GENERATOR:
        raise ValueError(f"{dataset_dir}: not written by `sim-tf synthesize --preset lifelong` (its feature_spec.yaml "
                         f"records no {synthetic.LIFELONG_GENERATOR} generator), so its pairs have no kinds to "
                         "regenerate")
    fields = {f.name for f in dataclasses.fields(synthetic.LifelongConfig)}
    return synthetic.LifelongConfig(**{k: v for k, v in recorded.items() if k in fields})


def split_by_kind(labels, probabilities, long_term) -> dict:
    """AUC overall, on long-term pairs and on session pairs."""
    from sim_tf.train.metrics import roc_auc

    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    long_term = np.asarray(long_term, bool)
    return {"auc": roc_auc(labels, probabilities),
            "auc_long_term": roc_auc(labels[long_term], probabilities[long_term]),
            "auc_session": roc_auc(labels[~long_term], probabilities[~long_term]),
            "long_term_samples": int(long_term.sum()), "session_samples": int((~long_term).sum())}


def read_predictions(path: str) -> dict:
    """{column: numpy array} of a `sim-tf predict` output (.parquet, else CSV)."""
    import pyarrow.csv
    import pyarrow.parquet

    table = pyarrow.parquet.read_table(path) if path.endswith(".parquet") else pyarrow.csv.read_csv(path)
    return {name: table.column(name).to_numpy() for name in table.column_names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", required=True, help="The lifelong dataset the predictions were made on.")
    parser.add_argument("--split", default="test", choices=["train", "test"], help="The split that was predicted.")
    parser.add_argument("predictions", nargs="+", help="`sim-tf predict` outputs (.parquet or .csv) of that split.")
    args = parser.parse_args(argv)
    from sim_tf.data import synthetic
    from sim_tf.data import tfrecord_writer as tw

    try:
        config = lifelong_config(args.dataset_dir)
    except (OSError, ValueError) as error:
        print(f"lifelong_pairs: {error}", file=sys.stderr)
        return 2
    _, splits, kinds = synthetic.generate_lifelong(config, pair_kinds=True)
    columns, kinds = splits[args.split], kinds[args.split]
    for path in args.predictions:
        try:
            frame = read_predictions(path)
            rows, probabilities = frame["probability"].size, frame["probability"]
            same = (rows == kinds.size and np.array_equal(frame["user"], columns[tw.user_feature(0)])
                    and np.array_equal(frame["item"], columns[tw.item_feature(0, tw.TARGET)]))
        except FileNotFoundError:
            print(f"lifelong_pairs: {path}: no such file", file=sys.stderr)
            return 2
        except (OSError, KeyError, ValueError) as error:  # pyarrow's errors derive from these
            print(f"lifelong_pairs: {path}: not a readable `sim-tf predict` output ({error})", file=sys.stderr)
            return 2
        if not same:
            print(f"lifelong_pairs: {path}: its rows are not the {args.split} split of {args.dataset_dir} in file "
                  f"order ({rows:,} rows against {kinds.size:,} samples, or other users/items): predict that split "
                  "with `sim-tf predict --input DATASET_DIR --mapping SPLIT`", file=sys.stderr)
            return 2
        labels = frame.get("label", columns[tw.LABEL])
        print(json.dumps({"predictions": path, **split_by_kind(labels, probabilities, kinds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
