# sim-tf on the official TensorFlow 2.21 GPU image (CUDA, cuDNN and NCCL included).
#   docker build -t sim-tf .
#   docker run --gpus all --rm -v $PWD/runs:/workspace sim-tf                     # the demo
#   docker run --gpus all --rm -v /data:/data sim-tf train --dataset_dir /data/tfrecord ...
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
ENTRYPOINT ["sim-tf"]
CMD ["demo", "--workdir", "/workspace"]
