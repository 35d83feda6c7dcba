#!/usr/bin/env bash
# BASIC-L at the paper's batch (65,536) on a Cloud TPU v4-512 slice (tpu-v4:4x8x8: 256 chips,
# 512 TensorCores, 64 hosts), the layout `basic compile --target tpu-v4:4x8x8` shows to fit.
#
#   TPU_NAME=my-v4-512 ZONE=us-central2-b BUCKET=gs://my-bucket launch/tpu-vm.sh
#
# The same command runs on every host (--worker=all). No process flags: on a TPU VM each host
# reads its worker number and the slice's hosts from the VM's metadata server, and host 0
# serves the coordinator on port 8482. Data and checkpoints live in the bucket, which every
# host reads and writes with the VM's service account. A maintenance event sends SIGTERM: the
# hosts agree on a step, checkpoint it and exit 0; running this script again continues there
# (--resume starts from step 0 when there is no checkpoint yet).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the slice's name}"
: "${ZONE:?set ZONE to the slice's zone}"
: "${BUCKET:?set BUCKET to a gs:// bucket holding data/ and receiving the run}"
RUN=${RUN:-basic-l}

# The binary (built with `cargo build --release`) and libtpu, next to it, on every host.
gcloud compute tpus tpu-vm scp target/release/basic "$TPU_NAME": --zone="$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="python3 -m pip install --no-deps --target .pjrt/libtpu libtpu==0.0.42.1"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="./basic train \
  --backend tpu \
  --model basic-l \
  --mesh data=64,model=8 \
  --partitioning data_model \
  --data '$BUCKET/data/{000000..065535}.tar' \
  --tokenizer tokenizer.json \
  --out $RUN \
  --checkpoint-dir $BUCKET/$RUN/checkpoints \
  --checkpoint-every 500 \
  --resume"
