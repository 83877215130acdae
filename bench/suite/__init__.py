"""Anomaly-detection quality suite: aescore vs reference detectors on bundled real tables.

Run it from the repository root (``python -m bench.suite --help``); ``bench/suite/__main__.py``
documents the protocol and the output, ``tables.py`` the tables, their anomaly definitions
and the fixed development / report split, ``detectors.py`` and ``mlp_ae.py`` the reference
detectors, ``common.py`` the pieces shared with ``bench/quality.py`` and ``report.py`` the
summary figures. Importing this package is cheap: nothing heavy is imported at load time.
"""
