"""Review page: browse verdicts for a folder, override them, apply and undo (served by ``blur-detect serve --root``).

:class:`ensemble.review.service.ReviewService` is the entry point; it is imported from there (not here) so that
importing this package pulls in neither FastAPI nor NumPy.

Modules: ``paths`` (listing and confinement), ``results`` (scores in memory and on disk), ``scanner`` (the
background scan), ``decisions`` (colours and what Apply moves), ``state`` (overrides file), ``pictures``
(thumbnails and overlays), ``actions`` (apply and undo), ``service`` (HTTP routes), ``static/`` (the page).
"""
