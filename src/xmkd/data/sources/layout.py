"""The layout of ``data/raw`` (and of a mirror): the relative path of every source file, the environment variable
naming the mirror, and the one-line description of the layout that error messages quote."""

from __future__ import annotations

MIRROR_ENV = "XMKD_DATA_MIRROR"  #: environment variable naming the local mirror; wins over params
SOURCES_FILE = "SOURCES.json"

MNIST_5K = "mnist/mnist_5k.csv.gz"
MNIST_IMAGES = "mnist/t10k-first8000-images-idx3-ubyte.gz"
MNIST_LABELS = "mnist/t10k-first8000-labels-idx1-ubyte.gz"
MNIST_TEST_COUNT = 8000  #: the first 8,000 images of the official t10k set are kept
FSDD_DIR = "fsdd/recordings"
ESC50_AUDIO_DIR = "esc50/audio"
ESC50_META = "esc50/meta/esc50.csv"
ESC50_FOLD = 4
ESC50_RATE = 8000  #: Hz, the rate ESC-50 clips are stored at in data/raw (upstream: 44.1 kHz)
ESC50_SECONDS = 5

#: What a mirror (and data/raw) must contain, for error messages.
LAYOUT_HELP = (
    f"{MNIST_5K}, {MNIST_IMAGES}, {MNIST_LABELS} (3 MNIST files); "
    f"{FSDD_DIR}/*.wav (2,500 FSDD recordings); "
    f"{ESC50_AUDIO_DIR}/*.wav (400 ESC-50 fold-4 clips at 8 kHz) and {ESC50_META}"
)
