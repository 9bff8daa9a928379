"""Helpers for opsfab's integration tests: sshd, docker, a local image, a git origin.

Nothing here imports pytest except ``ci``, so a demo or a benchmark can reuse the
builders (``from tests.support.images import ensure_busybox_image``).
"""
