# sim-tf on the official TensorFlow 2.21 GPU image (CUDA, cuDNN and NCCL included).
#   docker build -t sim-tf .
#   docker run --gpus all --rm -v $PWD/runs:/workspace sim-tf                     # the demo
#   docker run --gpus all --rm -v /data:/data sim-tf train --dataset_dir /data/tfrecord ...
# The image's own TensorFlow is used: sim-tf takes TensorFlow from an extra, which is not installed here.
FROM tensorflow/tensorflow:2.21.0-gpu

WORKDIR /opt/sim-tf
COPY pyproject.toml setup.cfg README.md ./
COPY sim_tf ./sim_tf
COPY configs ./configs
COPY launch ./launch
RUN pip install --no-cache-dir . \
    && sim-tf --help > /dev/null \
    && python -c "import tensorflow as tf, sim_tf; print('TensorFlow', tf.__version__)"

WORKDIR /workspace
ENTRYPOINT ["sim-tf"]
CMD ["demo", "--workdir", "/workspace"]
