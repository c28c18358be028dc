"""Training TinySSD: one step (``step``, a CUDA graph on CUDA), the fit (``train``), its epochs and epoch states
(``epochs``), validation while it trains (``validation``), a pack's per-seed values combined (``seeds``) and one
tracked run (``run``).

May import: ``evaluation``, ``model``, ``data`` and the ground floor.
"""
