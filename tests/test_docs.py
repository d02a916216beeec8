"""README stays true to the code: the flag table is the flags' own help, the Dockerfile's inputs exist."""

import os
import re

from sim_tf import docs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_flag_table_matches_the_flags():
    readme = open(os.path.join(ROOT, "README.md")).read()
    start, end = readme.index(docs.START), readme.index(docs.END) + len(docs.END)
    assert readme[start:end] == docs.readme_section(), "regenerate with `python -m sim_tf.docs`"


def test_readme_keeps_the_recipe_parameters():
    table = docs.table(docs.command_flags("sim_tf.main"))
    recipe = {"model_type": "sim", "embedding_dim": "16", "stage_one_mlp_dims": "200", "stage_two_mlp_dims": "200,80",
              "aux_mlp_dims": "100,50", "feature_spec": "feature_spec.yaml", "optimizer": "adam", "lr": "0.01",
              "weight_decay": "0.0", "epochs": "3", "global_batch_size": "131072", "dropout_rate": "-1.0",
              "amp": "False", "xla": "False", "drop_remainder": "False", "disable_cache": "False", "repeat_count": "0",
              "prefetch_train_size": "-1", "prefetch_test_size": "-1", "train_dataset_size": "11796480",
              "long_seq_length": "90", "results_dir": "/tmp/sim", "log_filename": "log.json",
              "save_checkpoint_path": "", "load_checkpoint_path": "", "mode": "train", "benchmark": "False",
              "benchmark_warmup_steps": "20", "benchmark_steps": "200", "affinity": "socket_unique_interleaved",
              "inter_op_parallelism": "0", "intra_op_parallelism": "0", "seed": "-1"}
    for name, default in recipe.items():
        assert f"| `--{name}` | `{default}` |" in table, name


def test_dockerfile_copies_files_that_exist_and_runs_the_console_script():
    dockerfile = open(os.path.join(ROOT, "Dockerfile")).read()
    copied = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            copied += line.split()[1:-1]
    assert copied
    for source in copied:
        assert os.path.exists(os.path.join(ROOT, source)), source
    entry = re.search(r'ENTRYPOINT \["([^"]+)"', dockerfile).group(1)
    assert f"{entry} = sim_tf.cli:main" in open(os.path.join(ROOT, "setup.cfg")).read()
    ignored = open(os.path.join(ROOT, ".dockerignore")).read().split()
    assert ".venv" in ignored and ".git" in ignored
