"""Procedural coloured-shape scenes (captions, rendering, held-out splits) and a classical image checker.

They train and evaluate the embedded default model: :mod:`scene` samples scenes and captions, :mod:`render`
draws them, :mod:`checker` reads back which coloured shapes an image shows.
"""
