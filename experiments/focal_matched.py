"""Does focal loss help beyond re-weighting the class loss against the box loss, and do the two add?

A two-by-two on paired seeds, with no search: focal loss (γ 0.10, α 0.75, focal-loss's best on bananas at the
quick profile) on or off, crossed with box weight 1 (the chapter's) or 4 (loss-weights' best). Focal with α 0.75
weights the background by 0.25, so it also shrinks the class loss against the box loss, as box weight 4 does:
"does focal loss help?" asked against the chapter's box weight 1 may carry the same effect as re-weighting.
Contrasts: focal's effect at each box weight (at box weight 4 the balance is already tuned) and the interaction
(focal's gain at 4 minus its gain at 1: 0 when the two add).
"""

FOCAL = {"cls_loss": "focal", "focal_gamma": 0.1, "focal_alpha": 0.75}
CELLS = {"ce, box 1": {}, "focal, box 1": FOCAL, "ce, box 4": {"box_weight": 4.0},
         "focal, box 4": {**FOCAL, "box_weight": 4.0}}
CONTRASTS = {"focal at box weight 1": {"focal, box 1": 1, "ce, box 1": -1},
             "focal at box weight 4": {"focal, box 4": 1, "ce, box 4": -1},
             "interaction": {"focal, box 4": 1, "ce, box 4": -1, "focal, box 1": -1, "ce, box 1": 1}}
