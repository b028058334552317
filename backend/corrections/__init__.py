"""Annotators' corrections: one webhook dispatcher (:mod:`.events`) and its listeners (agreement
per label, :mod:`.agreement`; the project memory registers its own). docs/corrections.md."""
