"""Review page: browse verdicts for a folder, override them, apply and undo (served by ``blur-detect serve --root``)."""
