"""Precomputed teacher embeddings: import them, align them to the clips, train only a classification head.

The paper's teacher (Xia et al., arXiv 2304.07775, following CCL, Chen et al. CVPR 2021) is a PANNs CNN14 audio
network pretrained on AudioSet whose 512-d embedding of each video's sound track is precomputed, one ``.npy`` per
video::

    <source>/<Class>/<video_id>.npy          e.g. audiocnn14embed512_features/Archery/v_Archery_g01_c01.npy

``<source>`` is a directory or a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive holding that tree (any number of leading
folders). A video is found **by its id** (the file stem), not by its class folder: UCF101's own files disagree on
case (folder ``HandstandPushups``, files ``v_HandStandPushups_*``), so ids are the only reliable key; folder names
that differ from the annotation's label (case-insensitively) are counted, not trusted. macOS ``._*`` resource
files and ``__MACOSX/`` entries are ignored.

Archives are read in one sequential pass with :mod:`tarfile`, without extracting to disk: a gzip stream cannot be
seeked cheaply, 6,837 small members (~15 MB) would cost more to write and clean up than to hold in memory, and a
failure leaves nothing behind.

Methods such as KD need teacher *logits*; the imported teacher has none, so a classification head (linear or a
one-hidden-layer MLP) is trained on the embeddings of the ``training`` subset (Adam, seeded, the last epoch's head
is used: no model selection on validation data) and gives logits for every clip. The embeddings are stored as they
are (raw, as the reference implementation feeds them to MNF); ``normalize`` only shapes the head's input.

The stage is ``stages/import_teacher.py``; to score the head alone on an annotation (nothing written)::

    python -m xmkd.teacher_import --annotation ../shared/datasets/ucf51/annotation.json \\
        --source ../shared/datasets/ucf51/audiocnn14embed512_features.tar.gz [--head mlp --epochs 50 ...]

The package, module by module: :mod:`~xmkd.teacher_import.config` (the params),
:mod:`~xmkd.teacher_import.embeddings` (reading, checking and aligning the embeddings), :mod:`~xmkd.teacher_import.head`
(the head, its training, top-k accuracy), :mod:`~xmkd.teacher_import.importer` (:func:`import_teacher` and the
command line).
"""

from __future__ import annotations

from xmkd.teacher_import.config import TeacherImportConfig
from xmkd.teacher_import.importer import ImportedTeacher, import_teacher

__all__ = ["ImportedTeacher", "TeacherImportConfig", "import_teacher"]
