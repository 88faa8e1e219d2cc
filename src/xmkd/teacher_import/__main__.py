"""``python -m xmkd.teacher_import``: score the head alone on an annotation (:func:`~xmkd.teacher_import.importer.main`)."""

from __future__ import annotations

from xmkd.teacher_import.importer import main

if __name__ == "__main__":
    main()
