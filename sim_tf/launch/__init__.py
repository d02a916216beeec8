"""Starting multi-worker jobs: N local workers (local.py) and TF_CONFIG for clusters (cluster.py)."""
