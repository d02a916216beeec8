"""Bad inputs and faults, table-driven: each must end with a non-zero exit, one message on stderr that names
the file / flag / feature, no traceback, no partial output, and (data loss) the exact sample counts.

The broken inputs are built once from tiny data; every case runs `sim-tf ...` in its own process, four at
a time, so the table costs about one process start per case.
"""

import concurrent.futures
import dataclasses
import gzip
import json
import os
import resource
import shutil
import struct
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

# Batch 2048: an epoch of tiny data is 8 steps, which keeps the cases that train short.
TRAIN = ["--long_seq_length=15", "--top_k=8", "--embedding_dim=8", "--global_batch_size=2048", "--model_type=din"]


@dataclasses.dataclass(frozen=True)
class Case:
    group: str
    name: str
    args: tuple  # `sim-tf` arguments; "{W}" is replaced by the world folder
    message: str  # must appear in stderr (after "{W}" is replaced)
    code: int = 1
    file_limit: int = 0  # RLIMIT_FSIZE in bytes for the process (0: none), to make writes fail
    leftovers: str = ""  # a folder (under {W}) that must hold no *.partial* entries afterwards


def _records(path):
    """Byte offsets where each TFRecord record ends."""
    ends, offset, data = [], 0, open(path, "rb").read()
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        offset += 12 + length + 4
        ends.append(offset)
    return ends


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _append_record(path, payload: bytes):
    with tf.io.TFRecordWriter(path + ".tmp") as writer:
        for record in tf.data.TFRecordDataset(path):
            writer.write(record.numpy())
        writer.write(payload)
    os.replace(path + ".tmp", path)


def _example(spec, history_length, float_feature=None):
    example = tf.train.Example()
    for name in spec.channel_features():
        values = [1] * (history_length if spec.is_history(name) else 1)
        feature = example.features.feature[name]
        if name == float_feature:
            feature.float_list.value.extend([float(v) for v in values])
        else:
            feature.int64_list.value.extend(values)
    return example.SerializeToString()


def _byo(folder, history=None, scalar=None, rows=16):
    """A BYO parquet folder; ``history`` / ``scalar`` replace item_sequence / uid with a pyarrow array."""
    os.makedirs(os.path.join(folder, "train"))
    os.makedirs(os.path.join(folder, "test"))
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        json.dump({"cardinalities": [{"name": "uid", "value": 5}, {"name": "item", "value": 40},
                                     {"name": "cat", "value": 3}]}, f)
    seq = pa.array([[1, 2]] * rows, pa.list_(pa.int64()))
    columns = {"label": pa.array([i % 2 for i in range(rows)]), "uid": scalar if scalar is not None else
               pa.array([1] * rows), "item": pa.array([2] * rows), "cat": pa.array([1] * rows),
               "item_sequence": history if history is not None else seq, "cat_sequence": seq,
               "neg_item_sequence": seq, "neg_cat_sequence": seq}
    for split in ("train", "test"):
        pq.write_table(pa.table(columns), os.path.join(folder, split, "part.0.parquet"))
    return folder


def _sim_tf(*args, file_limit=0, check=True, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "SIM_TF_DEBUG")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    limit = None
    if file_limit:
        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
    result = subprocess.run([sys.executable, "-m", "sim_tf", *args], capture_output=True, text=True, env=env,
                            timeout=timeout, preexec_fn=limit)
    if check and result.returncode != 0:
        raise AssertionError(f"sim-tf {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def world(tiny_dataset, tmp_path_factory):
    """Every broken input the cases need, built once."""
    from sim_tf.data import amazon_raw

    w = tmp_path_factory.mktemp("faults")
    spec, L = tiny_dataset, tiny_dataset.history_length
    good = _copy(spec.base_directory, str(w / "good"))

    # Truncated exactly at a record boundary: TFRecord reads it without an error. 2 records = 64 samples.
    for split, name in (("train", "trunc_train"), ("test", "trunc_test")):
        path = os.path.join(_copy(good, str(w / name)), spec.files(split)[0][len(spec.base_directory) + 1:])
        os.truncate(path, _records(path)[-3])
    corrupt = os.path.join(_copy(good, str(w / "corrupt")), "train", "part_0002.tfrecord")
    with open(corrupt, "r+b") as f:
        f.seek(os.path.getsize(corrupt) // 2)
        f.write(b"\xff" * 16)
    last_train = lambda folder: os.path.join(folder, "train", "part_0003.tfrecord")  # noqa: E731
    _append_record(last_train(_copy(good, str(w / "garbage"))), b"\x0a\x07garbage not an example")
    short = tf.train.Example.FromString(_example(spec, L))
    del short.features.feature["item_feat_0_pos"].int64_list.value[-3:]
    _append_record(last_train(_copy(good, str(w / "short"))), short.SerializeToString())
    _append_record(last_train(_copy(good, str(w / "floats"))), _example(spec, L, float_feature="user_feat_0"))

    def edit_spec(name, change):
        folder = _copy(good, str(w / name))
        path = os.path.join(folder, "feature_spec.yaml")
        text = open(path).read()
        open(path, "w").write(change(text))

    edit_spec("samples_text", lambda t: t.replace("train: 16384", "train: lots"))
    edit_spec("prebatch0", lambda t: t.replace("prebatch_size: 32", "prebatch_size: 0"))
    edit_spec("card1e12", lambda t: t.replace("cardinality: 2000", "cardinality: 1000000000000"))
    edit_spec("card1e30", lambda t: t.replace("cardinality: 2000", "cardinality: " + "1" + "0" * 30))

    # A trained checkpoint, an export of it, and a dataset whose item ids exceed the export's vocabulary.
    ckpt = str(w / "ckpt")
    _sim_tf("train", f"--dataset_dir={good}", f"--results_dir={w / 'run'}", f"--save_checkpoint_path={ckpt}",
            "--epochs=1", "--seed=1", *TRAIN)
    _sim_tf("export", f"--dataset_dir={good}", f"--load_checkpoint_path={ckpt}", f"--output={w / 'exported'}",
            *TRAIN)
    _copy(ckpt, str(w / "ckpt_garbage_index"))
    for entry in os.listdir(w / "ckpt_garbage_index"):
        if entry.endswith(".index"):
            (w / "ckpt_garbage_index" / entry).write_bytes(b"not an index" * 10)
    _copy(str(w / "exported"), str(w / "exported_garbage"))
    (w / "exported_garbage" / "saved_model.pb").write_bytes(b"garbage" * 100)
    _copy(str(w / "exported"), str(w / "exported_nojson"))
    os.remove(w / "exported_nojson" / "sim_tf_export.json")
    (w / "existing.csv").write_text("already here\n")
    _sim_tf("synthesize", "--preset=tiny", "--items=5000", f"--output={w / 'bigger_ids'}")
    (w / "used_results").mkdir()
    (w / "used_results" / "log.json").write_text('{"type": "start"}\n')
    (w / "a_file").write_text("x")
    (w / "odd_log").mkdir()
    (w / "odd_log" / "log.json").write_text('{"type": "step", "loss": 1}\n{"type": "eval"}\n{"type": "summ')
    (w / "byo_no_metadata" / "train").mkdir(parents=True)

    # Raw Amazon files and broken variants.
    raw = w / "raw"
    amazon_raw.write(amazon_raw.RawConfig(users=60, items=300, categories=10, seed=1), str(raw), log=None)
    reviews = open(raw / "reviews_Books.json", "rb").read()
    with gzip.open(w / "reviews_truncated.json.gz", "wb") as f:
        f.write(reviews)
    data = (w / "reviews_truncated.json.gz").read_bytes()
    (w / "reviews_truncated.json.gz").write_bytes(data[: len(data) // 2])
    (w / "reviews_not_gzip.json.gz").write_bytes(reviews[:5000])
    (w / "reviews_bad_time.json").write_bytes(
        b'{"reviewerID": "U1", "asin": "A1", "overall": 5.0, "unixReviewTime": 12345678901234567890123}\n' + reviews)
    meta = open(raw / "meta_Books.json").read().splitlines()
    asin = meta[0].split("'asin': '", 1)[1].split("'", 1)[0]  # an item the reviews mention
    (w / "meta_bad_categories.json").write_text("\n".join([f"{{'asin': '{asin}', 'categories': 5}}"] + meta[1:]) + "\n")

    # BYO parquet folders with histories and ids convert must refuse.
    n = 16
    _byo(str(w / "byo_float"), history=pa.array([[1.5, 2.7, 3.9]] * n, pa.list_(pa.float64())))
    _byo(str(w / "byo_string"), history=pa.array([["a", "b"]] * n, pa.list_(pa.string())))
    _byo(str(w / "byo_nested"), history=pa.array([[[1], [2]]] * n, pa.list_(pa.list_(pa.int64()))))
    _byo(str(w / "byo_null"), history=pa.array([[1, None, 2]] * n, pa.list_(pa.int64())))
    _byo(str(w / "byo_uint64"), scalar=pa.array([2**64 - 1] * n, pa.uint64()))
    corrupt_parquet = os.path.join(_byo(str(w / "byo_corrupt")), "train", "part.0.parquet")
    payload = bytearray(open(corrupt_parquet, "rb").read())
    payload[4:len(payload) // 2] = b"\x00" * (len(payload) // 2 - 4)
    open(corrupt_parquet, "wb").write(bytes(payload))
    return str(w)


G = "{W}/good"
R = "--results_dir={W}/r_{case}"
CASES = [
    # --- data loss: exact counts
    Case("data loss", "train on a split truncated at a record boundary", ("train", "--dataset_dir={W}/trunc_train", R,
         *TRAIN), "epoch 1 read 16,320 training samples but the train split holds 16,384"),
    Case("data loss", "evaluate a truncated test split", ("evaluate", "--dataset_dir={W}/trunc_test", R,
         "--load_checkpoint_path={W}/ckpt", *TRAIN), "the test split delivered 1,984 samples but holds 2,048"),
    Case("data loss", "inspect a truncated split", ("inspect", "--dataset_dir={W}/trunc_train"),
         "the train split holds 16,320 samples but its FeatureSpec declares 16,384"),
    # --- corrupt records
    Case("corrupt data", "16 corrupted bytes in a TFRecord file", ("train", "--dataset_dir={W}/corrupt", R, *TRAIN),
         "data file '{W}/corrupt/train/part_0002.tfrecord' is corrupt"),
    Case("corrupt data", "a record with a valid CRC and a garbage payload", ("train", "--dataset_dir={W}/garbage", R,
         *TRAIN), "data file '{W}/garbage/train/part_0003.tfrecord' does not match its FeatureSpec"),
    Case("corrupt data", "a record whose history is 3 values short", ("train", "--dataset_dir={W}/short", R, *TRAIN),
         "'{W}/short/train/part_0003.tfrecord' does not match its FeatureSpec: feature 'item_feat_0_pos'"),
    Case("corrupt data", "a feature stored as float_list", ("train", "--dataset_dir={W}/floats", R, *TRAIN),
         "'{W}/floats/train/part_0003.tfrecord' does not match its FeatureSpec"),
    Case("corrupt data", "inspect a corrupt file", ("inspect", "--dataset_dir={W}/corrupt"),
         "data file '{W}/corrupt/train/part_0002.tfrecord' is corrupt"),
    # --- FeatureSpec
    Case("spec", "metadata.samples is not a number", ("inspect", "--dataset_dir={W}/samples_text"),
         "metadata.samples must map each split to a whole number of samples"),
    Case("spec", "metadata.prebatch_size is 0", ("train", "--dataset_dir={W}/prebatch0", R, *TRAIN),
         "metadata.prebatch_size must be a whole number >= 1, got 0"),
    Case("spec", "a cardinality of 1e12", ("train", "--dataset_dir={W}/card1e12", R, *TRAIN),
         "has cardinality 1,000,000,000,000; at most 2,147,483,645 is supported"),
    Case("spec", "a cardinality of 1e30", ("inspect", "--dataset_dir={W}/card1e30"), "at most 2,147,483,645 is supported"),
    # --- flags
    Case("flags", "--shuffle_buffer 1e12", ("train", f"--dataset_dir={G}", R, *TRAIN, "--shuffle_buffer=1000000000000"),
         "--shuffle_buffer must be between 0 and 10,000,000 records"),
    Case("flags", "--intra_op_parallelism -1", ("train", f"--dataset_dir={G}", R, *TRAIN, "--intra_op_parallelism=-1"),
         "--intra_op_parallelism must be between 0"),
    Case("flags", "--microbatches larger than the per-replica batch", ("train", f"--dataset_dir={G}", R, *TRAIN,
         "--microbatches=3000"), "--microbatches 3000 is more than the 2048 samples each replica gets per step"),
    Case("flags", "--seed >= 2^32", ("train", f"--dataset_dir={G}", R, *TRAIN, "--seed=4294967296"),
         "--seed must be between 0 and 2**31 - 1"),
    Case("flags", "--dropout_rate nan", ("train", f"--dataset_dir={G}", R, *TRAIN, "--dropout_rate=nan"),
         "--dropout_rate must be a finite number < 1"),
    Case("flags", "--lr inf", ("train", f"--dataset_dir={G}", R, *TRAIN, "--lr=inf"), "--lr must be a finite number > 0"),
    Case("flags", "--weight_decay inf", ("train", f"--dataset_dir={G}", R, *TRAIN, "--weight_decay=inf"),
         "--weight_decay must be a finite number >= 0"),
    Case("flags", "--long_seq_length beyond the history", ("train", f"--dataset_dir={G}", R, *TRAIN,
         "--long_seq_length=40"), "--long_seq_length 40 must be between 1 and 19"),
    Case("flags", "inspect --long_seq_length -5", ("inspect", f"--dataset_dir={G}", "--long_seq_length=-5"),
         "sim-tf inspect: flag --long_seq_length=-5: -5 is not a", code=2),
    Case("flags", "tf-config --port 99999", ("launch", "tf-config", "--slurm", "--port=99999"),
         "sim-tf launch: flag --port=99999: 99999 is not a", code=2),
    Case("flags", "tf-config with a port out of range", ("launch", "tf-config", "--workers=a:99999,b:1", "--index=0"),
         "worker address 'a:99999': the port must be between 1 and 65535"),
    Case("flags", "--num_workers 1000", ("launch", "local", "--num_workers=1000", "--", "train"),
         "sim-tf launch: flag --num_workers=1000: 1000 is not a", code=2),
    Case("flags", "an unknown command for the workers", ("launch", "local", "--num_workers=3", "--", "frobnicate"),
         "unknown command 'frobnicate' after `--`"),
    # --- output locations (checked before any work)
    Case("outputs", "--results_dir is a file", ("train", f"--dataset_dir={G}", "--results_dir={W}/a_file", *TRAIN),
         "--results_dir '{W}/a_file' is a file, not a folder"),
    Case("outputs", "--save_checkpoint_path under a file", ("train", f"--dataset_dir={G}", R, *TRAIN,
         "--save_checkpoint_path={W}/a_file/ckpt"), "--save_checkpoint_path '{W}/a_file/ckpt' is not a writable folder"),
    Case("outputs", "--tensorboard_dir is a file", ("train", f"--dataset_dir={G}", R, *TRAIN,
         "--tensorboard_dir={W}/a_file"), "--tensorboard_dir '{W}/a_file' is a file, not a folder"),
    Case("outputs", "a results folder that holds another run", ("train", f"--dataset_dir={G}", *TRAIN,
         "--results_dir={W}/used_results"), "already holds another run's log"),
    # --- checkpoints and resuming
    Case("checkpoints", "resume with another --global_batch_size", ("train", f"--dataset_dir={G}", R, *TRAIN,
         "--epochs=2", "--seed=1", "--save_checkpoint_path={W}/ckpt", "--global_batch_size=256"),
         "holds a run with other settings (global_batch_size: 2048 -> 256)"),
    Case("checkpoints", "resume with another --optimizer", ("train", f"--dataset_dir={G}", R, *TRAIN, "--epochs=2",
         "--seed=1", "--save_checkpoint_path={W}/ckpt", "--optimizer=lazy_adam"), "optimizer: 'adam' -> 'lazy_adam'"),
    Case("checkpoints", "evaluate a checkpoint of another model type", ("evaluate", f"--dataset_dir={G}", R, *TRAIN,
         "--model_type=sim", "--load_checkpoint_path={W}/ckpt"), "does not fit a sim model with these flags"),
    Case("checkpoints", "evaluate with another embedding size", ("evaluate", f"--dataset_dir={G}", R, *TRAIN,
         "--embedding_dim=4", "--load_checkpoint_path={W}/ckpt"), "does not fit a din model with these flags"),
    Case("checkpoints", "a garbage checkpoint .index", ("evaluate", f"--dataset_dir={G}", R, *TRAIN,
         "--load_checkpoint_path={W}/ckpt_garbage_index"), "{W}/ckpt_garbage_index/ckpt-8"),
    # --- serving
    Case("serving", "a garbage saved_model.pb", ("predict", "--model={W}/exported_garbage", f"--input={G}",
         "--output={W}/p1.csv"), "--model '{W}/exported_garbage' is not a readable SavedModel"),
    Case("serving", "an export folder without its JSON", ("predict", "--model={W}/exported_nojson", f"--input={G}",
         "--output={W}/p2.csv"), "'{W}/exported_nojson/sim_tf_export.json' is missing or unreadable"),
    Case("serving", "an existing --output", ("predict", "--model={W}/exported", f"--input={G}",
         "--output={W}/existing.csv"), "--output '{W}/existing.csv' already exists; pass --overwrite"),
    Case("serving", "item ids outside the model's vocabulary", ("predict", "--model={W}/exported",
         "--input={W}/bigger_ids", "--output={W}/p3.csv"), "feature item_feat_0_trgt has ids outside 0..2000"),
    # --- raw Amazon files
    Case("preprocess", "a truncated gzip reviews file", ("preprocess", "amazon", "--reviews={W}/reviews_truncated.json.gz",
         "--meta={W}/raw/meta_Books.json", "--output={W}/pp1", "--min_reviews=5"),
         "a compressed input file is corrupt or truncated", leftovers="."),
    Case("preprocess", "a reviews file that is not gzip", ("preprocess", "amazon", "--reviews={W}/reviews_not_gzip.json.gz",
         "--meta={W}/raw/meta_Books.json", "--output={W}/pp2", "--min_reviews=5"),
         "a compressed input file is corrupt or truncated", leftovers="."),
    Case("preprocess", "--reviews naming a folder", ("preprocess", "amazon", "--reviews={W}/raw",
         "--meta={W}/raw/meta_Books.json", "--output={W}/pp3"), "{W}/raw: the path is a folder where a file is expected"),
    Case("preprocess", "a 23-digit review time (--strict)", ("preprocess", "amazon", "--reviews={W}/reviews_bad_time.json",
         "--meta={W}/raw/meta_Books.json", "--output={W}/pp4", "--strict", "--min_reviews=5"),
         "line 1: unixReviewTime out of range"),
    Case("preprocess", "'categories': 5 in the metadata (--strict)", ("preprocess", "amazon",
         "--reviews={W}/raw/reviews_Books.json", "--meta={W}/meta_bad_categories.json", "--output={W}/pp5", "--strict",
         "--min_reviews=5"), "line 1: categories is not a list of category paths"),
    # --- BYO parquet -> TFRecord
    Case("convert", "a list<float> history", ("convert", "--input={W}/byo_float", "--output={W}/c1"),
         "history column 'item_sequence' is list<", leftovers="."),
    Case("convert", "a list<string> history", ("convert", "--input={W}/byo_string", "--output={W}/c2"),
         "string>, expected a list of integer ids"),
    Case("convert", "a nested-list history", ("convert", "--input={W}/byo_nested", "--output={W}/c3"),
         "expected a list of integer ids"),
    Case("convert", "a null inside a history list", ("convert", "--input={W}/byo_null", "--output={W}/c4"),
         "history column 'item_sequence' has 16 null id(s) inside its lists"),
    Case("convert", "a uint64-max id", ("convert", "--input={W}/byo_uint64", "--output={W}/c5"),
         "column 'uid' holds id 18446744073709551615, beyond what an id can be"),
    Case("convert", "corrupted parquet pages", ("convert", "--input={W}/byo_corrupt", "--output={W}/c6"),
         "part.0.parquet is not a readable parquet file"),
    # --- missing things
    Case("missing", "a dataset folder that does not exist", ("train", "--dataset_dir={W}/nowhere", R, *TRAIN),
         "{W}/nowhere/feature_spec.yaml"),
    Case("missing", "a reviews file that does not exist", ("preprocess", "amazon", "--reviews={W}/none.json",
         "--meta={W}/raw/meta_Books.json", "--output={W}/pp6"), "input file '{W}/none.json' does not exist"),
    Case("missing", "a checkpoint that does not exist", ("evaluate", f"--dataset_dir={G}", R, *TRAIN,
         "--load_checkpoint_path={W}/no_ckpt"), "is neither a checkpoint folder nor a checkpoint"),
    Case("missing", "a BYO folder without metadata.json", ("convert", "--input={W}/byo_no_metadata",
         "--output={W}/c7"), "metadata.json"),
    Case("missing", "report on a log without plottable records", ("report", "{W}/odd_log"),
         "the log has no training steps or evaluations to plot"),
    Case("flags", "predict --batch_size 0", ("predict", "--model={W}/exported", f"--input={G}", "--output={W}/p4.csv",
         "--batch_size=0"), "sim-tf predict: flag --batch_size=0: 0 is not a", code=2),
    Case("checkpoints", "resume as another model type", ("train", f"--dataset_dir={G}", R, *TRAIN, "--epochs=2",
         "--seed=1", "--save_checkpoint_path={W}/ckpt", "--model_type=dien"), "model_type: 'din' -> 'dien'"),
    # --- a full disk (simulated with a file-size limit: writes fail with EFBIG)
    Case("disk", "synthesize", ("synthesize", "--preset=tiny", "--output={W}/s_full"),
         "the file grew larger than this file system allows", file_limit=200_000, leftovers="."),
    Case("disk", "convert", ("convert", "--input={W}/byo_float", "--output={W}/c_full"),
         "history column", file_limit=1_000),  # refused before it writes
    Case("disk", "predict", ("predict", "--model={W}/exported", f"--input={G}", "--output={W}/p_full.csv"),
         "the file grew larger than this file system allows", file_limit=20_000, leftovers="."),
    Case("disk", "preprocess", ("preprocess", "amazon", "--reviews={W}/raw/reviews_Books.json",
         "--meta={W}/raw/meta_Books.json", "--output={W}/pp_full", "--min_reviews=5", "--workers=1"),
         "the file grew larger than this file system allows", file_limit=30_000, leftovers="."),
    Case("disk", "the run log and checkpoints", ("train", f"--dataset_dir={G}", R, *TRAIN,
         "--save_checkpoint_path={W}/ck_full"), "the file grew larger than this file system allows",
         file_limit=150_000),
]


def _fill(text, world, case):
    return text.replace("{W}", world).replace("{case}", str(CASES.index(case)))


@pytest.fixture(scope="module")
def results(world):
    """Runs every case once, four at a time."""
    def run(case):
        args = [_fill(a, world, case) for a in case.args]
        return _sim_tf(*args, file_limit=case.file_limit, check=False)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case: pool.submit(run, case) for case in CASES}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.group}: {c.name}")
def test_fault_ends_in_one_clear_message(results, world, case):
    result = results[case]
    stderr = result.stderr.strip()
    assert result.returncode == case.code, (result.returncode, stderr[-2000:])
    assert "Traceback" not in result.stderr and "Graph execution error" not in result.stderr, stderr[-2000:]
    # One message: progress lines (preprocess writes them to stderr) may come before it, nothing after it but
    # absl's "Run ... --help" hint for a bad flag.
    lines = stderr.splitlines()
    messages = [line for line in lines if line.startswith("sim-tf ")]
    assert len(messages) == 1 and lines.index(messages[0]) >= len(lines) - (2 if case.code == 2 else 1), stderr
    assert _fill(case.message, world, case) in messages[0], stderr
    if case.leftovers:
        folder = _fill("{W}/" + case.leftovers, world, case)
        assert not [e for e in os.listdir(folder) if ".partial" in e], os.listdir(folder)


def test_no_partial_output_anywhere_after_the_cases(results, world):
    partial = [os.path.join(root, name) for root, dirs, files in os.walk(world) for name in dirs + files
               if ".partial" in name]
    assert not partial, partial


def test_feature_names_with_spaces_and_non_ascii_train(tiny_dataset, tmp_path):
    folder = _copy(tiny_dataset.base_directory, str(tmp_path / "names"))
    path = os.path.join(folder, "feature_spec.yaml")
    text = open(path).read().replace("user_feat_0", "user feat é")
    open(path, "w").write(text)
    for shard in tf.io.gfile.glob(os.path.join(folder, "*", "*.tfrecord")):
        with tf.io.TFRecordWriter(shard + ".tmp") as writer:
            for record in tf.data.TFRecordDataset(shard):
                example = tf.train.Example.FromString(record.numpy())
                example.features.feature["user feat é"].CopyFrom(example.features.feature["user_feat_0"])
                del example.features.feature["user_feat_0"]
                writer.write(example.SerializeToString())
        os.replace(shard + ".tmp", shard)
    _sim_tf("inspect", f"--dataset_dir={folder}")
    out = _sim_tf("train", f"--dataset_dir={folder}", f"--results_dir={tmp_path / 'r'}", "--epochs=1", *TRAIN)
    assert "test AUC" in out.stdout


def _start(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.Popen([sys.executable, "-m", "sim_tf", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _wait_for(stream, text, timeout_s=120):
    import time

    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not seen: {''.join(seen)[-2000:]}")


@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_mid_write_leaves_no_partial_output_and_no_traceback(tmp_path, sig, code):
    import signal
    import time

    process = _start("synthesize", "--preset=small", f"--output={tmp_path / 'd'}")
    _wait_for(process.stdout, "generated")  # writing has started
    time.sleep(0.5)
    process.send_signal(getattr(signal, sig))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert stderr.strip() == f"sim-tf synthesize: stopped by {sig}; partial output was removed"
    assert os.listdir(tmp_path) == []  # neither the dataset nor its staging folder


def test_sigterm_without_a_checkpoint_folder_says_nothing_was_saved(tiny_dataset, tmp_path):
    import signal

    process = _start("train", f"--dataset_dir={tiny_dataset.base_directory}", f"--results_dir={tmp_path / 'r'}",
                     "--epochs=50", "--log_every_steps=2", *TRAIN)
    _wait_for(process.stdout, "epoch 1/50 step 2/")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "nothing was saved (no --save_checkpoint_path), so running the command again starts over" in stderr
    assert "resume" not in stderr
