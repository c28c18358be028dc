"""Do the quick profile's answers hold at the chapter's protocol?

A designed contrast on paired seeds, with no search, meant for the chapter's profile (and for the quick one, to
measure transfer): each setting the quick profile called better, or left undecided, on bananas, against the
chapter's configuration. The cells are box weight 4 (loss-weights), focal loss with γ 0.10 and α 0.75
(focal-loss), random negatives at 10 a positive (negative-sampling) and smooth L1 at σ 1 (smooth-l1). One cell
per exercise and one control for all four: on a 2-core CPU the chapter's verdicts then cost five trainings a
seed, not a search per exercise. Run at both profiles, its four contrasts are the quick profile's answers
measured for transfer (`python cli.py transfer quick-winners-quick quick-winners-chapter`).
"""

BOX = {"box_weight": 4.0}
FOCAL = {"cls_loss": "focal", "focal_gamma": 0.1, "focal_alpha": 0.75}
RANDOM = {"neg_sampling": "random", "neg_pos_ratio": 10.0}
SMOOTH = {"box_loss": "smooth_l1", "smooth_l1_sigma": 1.0}
CELLS = {"chapter": {}, "box 4": BOX, "focal": FOCAL, "random negatives": RANDOM, "smooth L1": SMOOTH}
CONTRASTS = {f"{cell} against the chapter": {cell: 1, "chapter": -1} for cell in CELLS if cell != "chapter"}
ANSWERS = {"box 4 against the chapter": "loss-weights", "focal against the chapter": "focal-loss",
           "random negatives against the chapter": "negative-sampling", "smooth L1 against the chapter": "smooth-l1"}
