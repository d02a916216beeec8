"""`sim-tf preprocess events`: a hand-worked log, engine equivalence (one process against a 2-worker local
Dask cluster over TCP on loopback), the store format and every bad input."""

import filecmp
import functools
import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

pytest.importorskip("dask.dataframe")
pytest.importorskip("distributed")

from sim_tf.data.atomic import atomic_directory  # noqa: E402
from sim_tf.data.events_log import write_events_log  # noqa: E402
from sim_tf.errors import UserError  # noqa: E402
from sim_tf.preprocess import events  # noqa: E402

# (user, item, category, time), rows in no order. u3 has 2 events: dropped with min_events 3, and with it
# item w and category c3, which no kept user has.
HAND_LOG = [
    ("u2", "z", "c1", 40), ("u1", "y", "c2", 5), ("u3", "x", "c1", 1), ("u2", "x", "c1", 10),
    ("u1", "x", "c1", 9), ("u2", "y", "c2", 20), ("u3", "w", "c3", 2), ("u2", "x", "c1", 30),
    ("u1", "z", "c1", 7),
]


def write_log(folder, rows, columns=("user", "item", "category", "time"), name="log.parquet", csv=False):
    os.makedirs(folder, exist_ok=True)
    frame = pd.DataFrame(rows, columns=list(columns))
    path = os.path.join(folder, name)
    frame.to_csv(path, index=False) if csv else frame.to_parquet(path, index=False)
    return path


def run(path, output, engine=None, **overrides):
    config = events.EventsConfig(**{"item_feature_cols": ("category",), "history_length": 2, "partitions": 1,
                                    **overrides})
    with atomic_directory(output) as staging:
        with (engine or events.Engine(workers=0, log=lambda _: None)) as e:
            counts = events.preprocess_events(path, staging, config, e, log=lambda _: None)
    return counts


def rows_of(output, split):
    table = pq.read_table(os.path.join(output, split)).to_pandas()
    return [tuple(_plain(v) for v in row) for row in table.itertuples(index=False)], list(table.columns)


def _plain(value):
    return tuple(int(x) for x in value) if hasattr(value, "__len__") else int(value)


def test_a_hand_worked_log(tmp_path):
    path = write_log(tmp_path / "log", HAND_LOG)
    out = str(tmp_path / "out")
    counts = run(path, out)
    assert (counts["users"], counts["items"], counts["train"], counts["test"]) == (2, 3, 6, 4)
    # Dense ids in sorted order of the raw values, among kept users' events only.
    # Users: one mapping part per user part (mapping/user/part.N.parquet); items and features: one file.
    tables = {name: pq.read_table(os.path.join(out, "mapping", name if name == "user" else f"{name}.parquet"))
              for name in ("user", "item", "category")}
    mapping = {name: dict(zip(t.column("raw").to_pylist(), t.column("id").to_pylist())) for name, t in tables.items()}
    assert mapping == {"user": {"u1": 1, "u2": 2}, "item": {"x": 1, "y": 2, "z": 3}, "category": {"c1": 1, "c2": 2}}
    with open(os.path.join(out, "metadata.json")) as f:
        assert json.load(f)["cardinalities"] == [{"name": "uid", "value": 2}, {"name": "item", "value": 3},
                                                 {"name": "category", "value": 2}]
    category = {1: 1, 2: 2, 3: 1}  # x, y, z -> c1, c2, c1
    train, columns = rows_of(out, "train")
    assert columns == ["label", "uid", "item", "category", "item_sequence", "category_sequence",
                       "neg_item_sequence", "neg_category_sequence"]
    # u1 (y 5, z 7, x 9): test x after [y, z]; train z after [y]. u2 (x 10, y 20, x 30, z 40): test z after
    # [y, x]; train y after [x] and x after [x, y]. Histories of length 2, left-padded.
    positives = sorted((r[1], r[2], r[4]) for r in train if r[0] == 1)
    assert positives == [(1, 3, (0, 2)), (2, 1, (1, 2)), (2, 2, (0, 1))]
    test, _ = rows_of(out, "test")
    assert sorted((r[1], r[2], r[4]) for r in test if r[0] == 1) == [(1, 1, (2, 3)), (2, 3, (2, 1))]
    for row in train + test:
        label, uid, item, cat, items, cats, negs, neg_cats = row
        assert cat == category[item] and cats == tuple(category.get(i, 0) for i in items)
        assert neg_cats == tuple(category.get(i, 0) for i in negs)
        # Negative history: a drawn item exactly where the history is real.
        assert all((n == 0) == (i == 0) for n, i in zip(negs, items)) and set(negs) <= {0, 1, 2, 3}
    # Each positive has one negative twin: same user and history, a drawn target, label 0.
    for rows in (train, test):
        twins = sorted((r[1], r[4], r[6]) for r in rows if r[0] == 0)
        assert twins == sorted((r[1], r[4], r[6]) for r in rows if r[0] == 1)
    # Test rows come as (positive, its negative) pairs.
    assert [r[0] for r in test] == [1, 0, 1, 0]


def test_time_split_and_explicit_labels(tmp_path):
    rows = [(u, i, c, t, t % 2) for u, i, c, t in HAND_LOG]  # odd times are clicks
    path = write_log(tmp_path / "log", rows, columns=("user", "item", "category", "time", "clicked"))
    out = str(tmp_path / "out")
    run(path, out, label_col="clicked", test_split="time:9", min_history=1)
    train, _ = rows_of(out, "train")
    test, _ = rows_of(out, "test")
    # Histories hold clicks only: u1 clicked y(5), z(7), x(9); u2 clicked nothing (even times). Samples are
    # events with at least one earlier click, each with its own label; times >= 9 are test samples.
    assert sorted((r[0], r[1], r[2], r[4]) for r in train) == [(1, 1, 3, (0, 2))]
    assert sorted((r[0], r[1], r[2], r[4]) for r in test) == [(1, 1, 1, (2, 3))]


def test_negatives_follow_popularity(tmp_path):
    write_events_log(str(tmp_path / "log"), 20_000, 200, 50, 5, seed=1, files=2)
    out = str(tmp_path / "out")
    run(str(tmp_path / "log"), out, history_length=5, partitions=3)
    train = pq.read_table(os.path.join(out, "train")).to_pandas()
    positives = train[train.label == 1]
    negatives = train[train.label == 0]
    assert len(negatives) == len(positives)
    items = pd.read_parquet(os.path.join(out, "mapping", "item.parquet"))
    logged = pd.read_parquet(str(tmp_path / "log"))
    counts = logged.item.value_counts().reindex(items.raw.to_numpy()).to_numpy()  # every user is kept here
    want = counts / counts.sum()
    got = np.bincount(negatives.item, minlength=items.shape[0] + 1)[1:] / len(negatives)
    assert 0.5 * np.abs(got - want).sum() < 0.03  # total variation against the popularity


def test_the_alias_table_draws_items_in_proportion_to_their_counts():
    counts = np.array([1, 2, 3, 0, 4, 7, 1])
    table = events.Popularity(counts)
    keep = table.threshold.astype(np.float64) / 2**32
    # Exactly: item i is drawn from its own bucket (keep_i) and from every bucket aliased to it (ids 1-based).
    exact = [(keep[i] + sum(1 - keep[j] for j in range(counts.size) if table.alias[j] == i + 1 and j != i)) / counts.size
             for i in range(counts.size)]
    np.testing.assert_allclose(exact, counts / counts.sum(), atol=1e-9)
    bits = events.draw_bits(0, np.arange(20_000)[:, None], 0, np.arange(5)[None, :]).reshape(-1)
    drawn = np.bincount(table.draw(bits), minlength=counts.size + 1)[1:] / bits.size
    np.testing.assert_allclose(drawn, counts / counts.sum(), atol=0.01)
    assert drawn[3] == 0


def test_one_process_and_a_two_worker_cluster_write_the_same_bytes(tmp_path):
    write_events_log(str(tmp_path / "log"), 30_000, 400, 300, 20, seed=2, files=3)
    single, cluster = str(tmp_path / "single"), str(tmp_path / "cluster")
    run(str(tmp_path / "log"), single, history_length=8, partitions=4)
    engine = events.Engine(workers=2, memory_limit="1GiB", log=lambda _: None)
    assert engine.client.scheduler_info()["address"].startswith("tcp://127.0.0.1:")
    run(str(tmp_path / "log"), cluster, engine=engine, history_length=8, partitions=4)
    files = sorted(os.path.relpath(os.path.join(d, f), single) for d, _, fs in os.walk(single) for f in fs)
    assert len(files) == (2 + 4) + 1 + 4 + 4  # item and category mappings, user mapping parts, metadata, splits
    match, mismatch, errors = filecmp.cmpfiles(single, cluster, files, shallow=False)
    assert (mismatch, errors) == ([], [])


def test_rows_do_not_depend_on_the_row_group_size(tmp_path, monkeypatch):
    """A row group draws its positives' histories once and writes each positive with its negative twin;
    with 1-positive groups (and 3-row groups with explicit labels) the same rows come out."""
    write_events_log(str(tmp_path / "log"), 3_000, 60, 50, 5, seed=4, files=1)
    write_events_log(str(tmp_path / "labelled"), 3_000, 60, 50, 5, seed=4, files=1, labels=True)
    whole = functools.partial(events.write_samples, rows_per_group=65536)
    for log, tiny, overrides in (("log", 2, {}), ("labelled", 3, {"label_col": "clicked"})):
        outputs = []
        for group in (whole, functools.partial(events.write_samples, rows_per_group=tiny)):
            monkeypatch.setattr(events, "write_samples", group)
            outputs.append(str(tmp_path / f"{log}-{len(outputs)}"))
            run(str(tmp_path / log), outputs[-1], history_length=6, **overrides)
        for split in ("train", "test"):
            big, small = rows_of(outputs[0], split)[0], rows_of(outputs[1], split)[0]
            assert len(big) >= 60 and sorted(big) == sorted(small), (log, split)
    # Train rows are (positive, negative twin) pairs: same user and histories, labels 1 then 0; the pairs'
    # order is random (not sorted by user).
    for output in ("log-0", "log-1"):
        train = pq.read_table(os.path.join(str(tmp_path / output), "train")).to_pandas()
        first, second = train.iloc[0::2].reset_index(drop=True), train.iloc[1::2].reset_index(drop=True)
        assert (first["label"] == 1).all() and (second["label"] == 0).all()
        assert (first["uid"] == second["uid"]).all()
        assert all((a == b).all() for a, b in zip(first["item_sequence"], second["item_sequence"]))
        assert not (np.diff(first["uid"].to_numpy()) >= 0).all()


def test_preprocess_never_imports_tensorflow(tmp_path):
    """`sim-tf preprocess` is pandas/pyarrow/Dask work: TensorFlow's seconds of start-up are not paid."""
    import subprocess
    import sys

    log = write_log(str(tmp_path / "log"), HAND_LOG)
    probe = ("import sys\nfrom sim_tf import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    code = e.code\nprint('TensorFlow imported' if 'tensorflow' in sys.modules else 'no TensorFlow', "
             "file=sys.stderr)\nsys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, "sim-tf", "preprocess", "events", "--input", log, "--output",
                             str(tmp_path / "out"), "--item_feature_cols", "category", "--workers", "0",
                             "--history_length", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().endswith("no TensorFlow"), result.stderr
    assert os.path.exists(tmp_path / "out" / "metadata.json")


def test_a_closed_standard_output_stops_the_command_with_one_message(tmp_path):
    """`sim-tf preprocess ... | head` whose reader has exited: one line, SIGPIPE's exit code, no output."""
    import signal
    import subprocess
    import sys

    log = write_log(str(tmp_path / "log"), HAND_LOG)
    out = tmp_path / "out"
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "sim_tf", "preprocess", "events", "--input", log, "--output",
                                 str(out), "--item_feature_cols", "category", "--workers", "0", "--history_length",
                                 "2"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert result.returncode == 128 + signal.SIGPIPE, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("sim-tf preprocess: stopped: standard output was closed (its "
                                                      "reader exited); partial output was removed"), result.stderr
    assert sorted(os.listdir(tmp_path)) == ["log"]  # neither the output nor its staging folder


def test_store_format_loads_as_a_behaviour_store(tmp_path):
    from sim_tf.data import feature_spec as fs
    from sim_tf.data.behavior_store import BehaviorStore

    path = write_log(tmp_path / "log", HAND_LOG)
    out = str(tmp_path / "out")
    counts = run(path, out, fmt="store")
    assert (counts["train"], counts["test"]) == (6, 4)
    spec = fs.FeatureSpec.from_yaml(os.path.join(out, "feature_spec.yaml"))
    store = BehaviorStore.load(spec.store.file)
    # Users 1 (y, z, x) and 2 (x, y, x, z), every event once, in time order.
    assert store.offsets.tolist() == [0, 0, 3, 7]
    assert store.features[spec.store.arrays[0]].tolist() == [2, 3, 1, 1, 2, 1, 3]
    assert store.features[spec.store.arrays[1]].tolist() == [2, 1, 1, 1, 2, 1, 1]


@pytest.mark.parametrize("rows, columns, overrides, message", [
    (HAND_LOG, ("user", "item", "cat", "time"), {}, r"has no column\(s\) \['category'\]"),
    ([("u1", "x", "c", "yesterday-ish")] * 3, None, {}, "time 'yesterday-ish' is neither an integer nor a date/time"),
    ([("u1", "x", "c", 1.5)] * 3, None, {}, "time 1.5 is not an integer"),
    ([("u1", "x", "c", 1), (None, "x", "c", 2)], None, {}, "column 'user' has 1 null value"),
    ([("u1", None, "c", 1)], None, {}, "column 'item' has 1 null value"),
    (HAND_LOG, None, {"min_events": 50}, "no user has 50 or more events; lower --min_events"),
    (HAND_LOG, None, {"min_history": 5}, "no training samples"),
])
def test_bad_logs_stop_with_one_message_and_no_output(tmp_path, rows, columns, overrides, message):
    path = write_log(tmp_path / "log", rows, columns=columns or ("user", "item", "category", "time"))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message):
        run(path, str(out), **overrides)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


def test_empty_log_and_unreadable_input(tmp_path):
    path = write_log(tmp_path / "log", [], columns=("user", "item", "category", "time"))
    with pytest.raises(UserError, match="holds no events"):
        run(path, str(tmp_path / "out"))
    with pytest.raises(UserError, match="cannot be read"):
        run(str(tmp_path / "missing.parquet"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_csv_input_and_date_times(tmp_path):
    rows = [(u, i, c, pd.Timestamp(1_400_000_000 + t, unit="s").isoformat()) for u, i, c, t in HAND_LOG]
    path = write_log(tmp_path / "log", rows, name="log.csv", csv=True)
    out = str(tmp_path / "out")
    run(path, out)
    test, _ = rows_of(out, "test")
    assert sorted((r[1], r[2], r[4]) for r in test if r[0] == 1) == [(1, 1, (2, 3)), (2, 3, (2, 1))]


def test_a_folder_of_csv_files_is_read_as_csv(tmp_path):
    """A data lake's layout: a folder of CSV parts (and a marker file), no flag needed; the same rows as
    one file."""
    single = run(write_log(tmp_path / "one", HAND_LOG, name="log.csv", csv=True), str(tmp_path / "out_one"))
    half = len(HAND_LOG) // 2
    write_log(tmp_path / "parts", HAND_LOG[:half], name="part-0.csv", csv=True)
    write_log(tmp_path / "parts", HAND_LOG[half:], name="part-1.csv.gz", csv=True)
    (tmp_path / "parts" / "_SUCCESS").write_text("")
    counts = run(str(tmp_path / "parts"), str(tmp_path / "out_parts"))
    assert {k: v for k, v in counts.items() if k != "seconds"} == {k: v for k, v in single.items() if k != "seconds"}
    for split in ("train", "test"):
        assert sorted(rows_of(str(tmp_path / "out_parts"), split)[0]) == sorted(rows_of(str(tmp_path / "out_one"),
                                                                                       split)[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is a folder with no data files"):
        run(str(tmp_path / "empty"), str(tmp_path / "out_empty"), csv=True)
    write_log(tmp_path / "named", HAND_LOG, name="part-0.log", csv=True)  # CSV under another name
    with pytest.raises(UserError, match="cannot be read as parquet: .*--input_format csv"):
        run(str(tmp_path / "named"), str(tmp_path / "out_named"))
    run(str(tmp_path / "named"), str(tmp_path / "out_named"), csv=True)  # as the hint says
    assert sorted(rows_of(str(tmp_path / "out_named"), "train")[0]) == sorted(rows_of(str(tmp_path / "out_one"),
                                                                                     "train")[0])


def test_an_unreachable_scheduler_is_named():
    with pytest.raises(UserError, match="--scheduler 'tcp://127.0.0.1:9': no Dask scheduler answered"):
        events.Engine(scheduler="tcp://127.0.0.1:9", timeout_s=2)


def test_bad_options():
    with pytest.raises(UserError, match="--test_split must be `last` or `time:T`"):
        events.EventsConfig(test_split="random")
    with pytest.raises(UserError, match="T must be an integer time or an ISO date/time"):
        events.EventsConfig(test_split="time:soon")
    with pytest.raises(UserError, match="name a column twice"):
        events.EventsConfig(user_col="id", item_col="id")
    with pytest.raises(UserError, match="taken by the output's own columns"):
        events.EventsConfig(item_feature_cols=("item_sequence",))
