"""Do random negatives help beyond re-weighting the class loss against the box loss, and do the two add?

A two-by-two on paired seeds, with no search: random negatives at 10 a positive (negative-sampling's best on
bananas at the quick profile) or every negative (the chapter's), crossed with box weight 1 (the chapter's) or 4
(loss-weights' best). In the chapter's mean over all anchors an unsampled negative counts 0, so sampling also
shrinks the class loss against the box loss, as box weight 4 does. Contrasts: the sampling's effect at each box
weight, and the interaction (0 when the two add).
"""

RANDOM = {"neg_sampling": "random", "neg_pos_ratio": 10.0}
CELLS = {"all, box 1": {}, "random, box 1": RANDOM, "all, box 4": {"box_weight": 4.0},
         "random, box 4": {**RANDOM, "box_weight": 4.0}}
CONTRASTS = {"random negatives at box weight 1": {"random, box 1": 1, "all, box 1": -1},
             "random negatives at box weight 4": {"random, box 4": 1, "all, box 4": -1},
             "interaction": {"random, box 4": 1, "all, box 4": -1, "random, box 1": -1, "all, box 1": 1}}
