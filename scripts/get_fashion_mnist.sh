#!/usr/bin/env bash
# Makes Fashion-MNIST available offline. In order:
#   1. the IDX files are already in $ENSEMBLES_FASHION_MNIST_DIR (default /usr/share/datasets/fashion-mnist);
#   2. Debian's package dataset-fashion-mnist, when apt-get is usable (root or passwordless sudo);
#   3. tensorflow-datasets' own download (needs network);
#   4. otherwise: a message saying how to get the files, and exit status 1.
set -u
dir="${ENSEMBLES_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
python="${1:-python3}"

have_files() { for f in $files; do [ -s "$dir/$f" ] || return 1; done; }

have_files && exit 0

if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then sudo_cmd=""; elif sudo -n true 2>/dev/null; then sudo_cmd="sudo -n"; else sudo_cmd="none"; fi
  if [ "$sudo_cmd" != none ]; then
    echo "Installing Debian's dataset-fashion-mnist ..." >&2
    if $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
        || { $sudo_cmd apt-get update -qq >/dev/null 2>&1 && \
             $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; then
      have_files && exit 0
    fi
  fi
fi

echo "Trying tensorflow-datasets' download of fashion_mnist ..." >&2
if "$python" -c "import tensorflow_datasets as tfds; tfds.data_source('fashion_mnist', split='test')" >/dev/null 2>&1; then
  exit 0
fi

cat >&2 <<MSG
Fashion-MNIST is not available and could not be installed automatically.
Get it with Debian's package (as root):  apt-get update && apt-get install dataset-fashion-mnist
or copy the four IDX files ($files)
into a folder and set ENSEMBLES_FASHION_MNIST_DIR to it.
MSG
exit 1
