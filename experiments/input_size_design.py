"""Does a bigger input help, or is it the anchors kept in pixels, and do the two add?

A two-by-two on paired seeds on shapes, with no search: the profile's input side (128 px at the quick profile,
where input-size runs at 128, and the chapter's 256) or 1.5 times it (192 or 384 px), crossed with the chapter's
anchors (fractions of the image side) or anchors shrunk by 1.5 (anchor_scale 0.667: at the bigger side, the same
sizes in pixels as at the smaller). The cells are sized relative to the profile (Scaled), so the question is the
same at both profiles and its contrasts pair for transfer (`python cli.py transfer input-size-design-quick
input-size-design-chapter`). input-size's search (one seed a cell) said the anchors gave most of its gain; this
decides it. Contrasts: the input's effect with the chapter's anchors, the anchors' effect at the profile's side,
and the interaction (0 when the two add). The exercise asks about small objects, and shapes is 62% small objects
by COCO's measure, so AP on small objects is a secondary outcome: each contrast is also reported on it, on the
same seeds, with its own interval. Both single-cell contrasts answer the input-size exercise (ANSWERS), so the
answer sheet lists each as an input-size verdict at the profile it was decided at.
"""

from experiments import Scaled

FIXED = {"dataset": "shapes"}
SECONDARY = ("val/map_small",)
FIXED_BY_PROFILE = {"quick": {"image_size": 128}}
BIGGER, SMALLER_ANCHORS = {"image_size": Scaled(1.5)}, {"anchor_scale": Scaled(0.667)}
CELLS = {"the profile's side, chapter's anchors": {}, "side x1.5, chapter's anchors": BIGGER,
         "the profile's side, anchors x0.667": SMALLER_ANCHORS, "side x1.5, anchors x0.667": {**BIGGER,
                                                                                             **SMALLER_ANCHORS}}
CONTRASTS = {"input x1.5": {"side x1.5, chapter's anchors": 1, "the profile's side, chapter's anchors": -1},
             "anchors x0.667": {"the profile's side, anchors x0.667": 1, "the profile's side, chapter's anchors": -1},
             "interaction": {"side x1.5, anchors x0.667": 1, "side x1.5, chapter's anchors": -1,
                             "the profile's side, anchors x0.667": -1, "the profile's side, chapter's anchors": 1}}
ANSWERS = {"input x1.5": "input-size", "anchors x0.667": "input-size"}
