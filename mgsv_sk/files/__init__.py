"""Files this library writes and reads: checksummed atomic artefact folders, writer locks
(``_atomic``), and the rules for opening a path that came from outside (``_paths``: only
regular files, paths named by data kept inside their root).

Standard library and :mod:`mgsv_sk.errors` only.
"""
