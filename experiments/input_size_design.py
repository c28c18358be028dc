"""Does a bigger input help, or is it the anchors kept in pixels, and do the two add?

A two-by-two on paired seeds on shapes, with no search: the input at 128 px (the quick profile's side for input-
size) or 192, crossed with the chapter's anchors (fractions of the image side) or anchors shrunk by 1.5
(anchor_scale 0.667: at 192 px, the same sizes in pixels as at 128). input-size's search (one seed a cell) said the
anchors gave most of its gain; this decides it. Contrasts: the input's effect with the chapter's anchors, the
anchors' effect at 128 px, and the interaction (0 when the two add). Its sides are absolute (128 and 192 px): it
asks its question at the quick profile only. At the chapter's profile its control would be 256 px and its "192 px"
cells smaller than the control; the chapter's version of this question (256 against 384 px) needs cells sized
relative to the profile's side, not written yet. The exercise asks about small objects, and shapes is 62% small
objects by COCO's measure, so AP on small objects is a secondary outcome: each contrast is also reported on it, on
the same seeds, with its own interval. Both single-cell contrasts answer the input-size exercise (ANSWERS), so the
answer sheet lists each as an input-size verdict at the quick profile, decided on the CPU.
"""

FIXED = {"dataset": "shapes"}
SECONDARY = ("val/map_small",)
FIXED_BY_PROFILE = {"quick": {"image_size": 128}}
CELLS = {"128 px, chapter's anchors": {}, "192 px, chapter's anchors": {"image_size": 192},
         "128 px, anchors x0.667": {"anchor_scale": 0.667}, "192 px, anchors x0.667": {"image_size": 192,
                                                                                       "anchor_scale": 0.667}}
CONTRASTS = {"input 192 px": {"192 px, chapter's anchors": 1, "128 px, chapter's anchors": -1},
             "anchors x0.667": {"128 px, anchors x0.667": 1, "128 px, chapter's anchors": -1},
             "interaction": {"192 px, anchors x0.667": 1, "192 px, chapter's anchors": -1,
                             "128 px, anchors x0.667": -1, "128 px, chapter's anchors": 1}}
ANSWERS = {"input 192 px": "input-size", "anchors x0.667": "input-size"}
