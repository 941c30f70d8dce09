"""Files this library writes and reads: checksummed atomic artefact folders, writer locks
(``_atomic``), the rules for opening a path that came from outside (``_paths``: only
regular files, paths named by data kept inside their root), and naming an artefact of
another kind (``_kinds``).

Standard library and :mod:`mgsv_sk.errors` only. Other sub-packages import the
names below from ``mgsv_sk.files``, never from its private modules.
"""

from mgsv_sk.files._atomic import (
    MODEL_FOLDER,
    ONNX_BUNDLE,
    PACKED_STORE,
    Artefact,
    atomic_directory,
    check_destination,
    file_checksums,
    sha256_file,
    verify_checksums,
    writer_lock,
)
from mgsv_sk.files._kinds import other_kind_error
from mgsv_sk.files._paths import (
    check_relative,
    exists_as_name,
    inside_root,
    open_regular,
    regular_file,
)

__all__ = ["MODEL_FOLDER", "ONNX_BUNDLE", "PACKED_STORE", "Artefact", "atomic_directory",
           "check_destination", "check_relative", "exists_as_name", "file_checksums",
           "inside_root", "open_regular", "other_kind_error", "regular_file", "sha256_file",
           "verify_checksums", "writer_lock"]
