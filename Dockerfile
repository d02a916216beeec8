# sim-tf on the official TensorFlow 2.21 GPU image (CUDA, cuDNN and NCCL included).
#   docker build -t sim-tf .
#   docker run --gpus all --rm --shm-size=16g --ulimit memlock=-1 -v $PWD/runs:/workspace sim-tf     # the demo
#   docker run --gpus all --rm --shm-size=16g --ulimit memlock=-1 -v /data:/data -v $PWD/runs:/workspace \
#       sim-tf train --dataset_dir /data/tfrecord ...
# --shm-size: NCCL and tf.data use /dev/shm (Docker's default is 64 MB); --ulimit memlock=-1: NCCL pins
# host memory. Mount /workspace to keep the CUDA kernel cache (below) between runs.
# The image's own TensorFlow is used: sim-tf takes TensorFlow from an extra, which is not installed here.
FROM tensorflow/tensorflow:2.21.0-gpu

WORKDIR /opt/sim-tf
COPY pyproject.toml setup.cfg README.md constraints.txt ./
COPY sim_tf ./sim_tf
COPY configs ./configs
COPY launch ./launch
# Dependencies at the versions in constraints.txt (TensorFlow itself is the image's own).
RUN grep -v -i '^tensorflow' constraints.txt > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt . \
    && sim-tf --help > /dev/null \
    && python -c "import tensorflow as tf, sim_tf; print('TensorFlow', tf.__version__)"

# Run as an unprivileged user: training needs no root, and a worker's port should not run requests as root.
RUN useradd --create-home --uid 1000 simtf && mkdir -p /workspace && chown simtf /workspace
USER simtf
WORKDIR /workspace
# Kernels the TensorFlow build has no binary for (a newer GPU) are compiled on first use, which takes
# minutes; the cache on the mounted /workspace keeps them for the next run.
ENV CUDA_CACHE_PATH=/workspace/.cuda_cache CUDA_CACHE_MAXSIZE=4294967296
ENTRYPOINT ["sim-tf"]
CMD ["demo", "--workdir", "/workspace"]
