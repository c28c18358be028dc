"""Do the single winners add up when stacked, or is a joint search worth its cost?

A designed contrast on paired seeds, with no search: the chapter's configuration, each single knob that won on
bananas at the quick profile (box weight 4; focal loss with γ 0.10, α 0.75; random negatives at 10 a positive),
and all three at once. combined's joint search (10 TPE trials over 7 knobs) found nothing that beat the control,
more likely a search too small than knobs that fail to add. Contrasts: all three against the control, and
additivity: all three minus the sum of the three single effects (0 when they add; below 0 when they overlap,
as three ways of shrinking the class loss against the box loss might).
"""

BOX = {"box_weight": 4.0}
FOCAL = {"cls_loss": "focal", "focal_gamma": 0.1, "focal_alpha": 0.75}
RANDOM = {"neg_sampling": "random", "neg_pos_ratio": 10.0}
CELLS = {"chapter": {}, "box 4": BOX, "focal": FOCAL, "random negatives": RANDOM,
         "all three": {**BOX, **FOCAL, **RANDOM}}
CONTRASTS = {"all three against the chapter": {"all three": 1, "chapter": -1},
             "additivity (all three minus the sum of the single effects)":
                 {"all three": 1, "box 4": -1, "focal": -1, "random negatives": -1, "chapter": 2}}
