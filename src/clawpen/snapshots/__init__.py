"""Workspace snapshots with restic: one local repository (``<state>/snapshots/repo``), its
password in the clawpen vault (:mod:`clawpen.snapshots.restic`), and a consistent backup of a
running bot by freezing its cgroup while restic reads (:mod:`clawpen.snapshots.consistent`).
"""
