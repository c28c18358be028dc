"""TinySSD and what it is made of: anchors and boxes (``boxes``), the network (``tinyssd``), each exercise's loss
piece (``losses``), seed packs of K replicas (``pack``), averaged weights (``averaging``) and checkpoints
(``checkpoint``: inference loads them, so they sit here, below training and evaluation).

May import: the ground floor (``pipeline.config``, ...) only.
"""
