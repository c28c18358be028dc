"""Does a bigger input help, above all for small objects, or is it the anchors that matter?

Compared against: trial 0, 128 px in the quick profile (not its 64: at 64 px the shapes' small objects
are a few pixels, and a 1.25 step does not reach the next multiple of 32), 256 in the chapter's, with the
chapter's anchors. Each trial scales by 1.25, 1.5 or 2 (`scale`) one or both
of two things (`changed`):
  * input: the input side grows; the chapter's anchors, whose sizes are fractions of the image
    side (0.2 to 0.961), grow with it, so only the feature maps get denser;
  * input+anchors: the input side grows and the anchors keep their size in pixels
    (anchor_scale = 1 / scale), so the bigger input also gets anchors for relatively smaller objects;
  * anchors: the input side stays and the anchors shrink as in input+anchors: the anchors' share
    of that gain, at the control's cost.
With the control this is the full two-by-two design at each scale, so the report's heatmap says
what the input and the anchors each add. Why anchors: measured on the 'shapes' validation split,
no COCO-small object (under 32x32 px) overlaps any of the chapter's anchors at IoU 0.5 at any
input side, and only 33% of all objects do. With anchors fixed in pixels, 6%, 15% and 38% of the
small objects (42%, 47%, 60% of all) do at 160, 192 and 256 px (measured by hand; `python cli.py anchors
--dataset shapes --split val --set image_size=192 --set anchor_scale=0.667` now measures any such setting).
(The chapter's matching still
gives every object its best anchor as a positive, but that anchor's offsets have to stretch far.)
Runs on 'shapes', because the chapter's bananas have no small objects; its images are drawn at
256 px, so sides above that are upsampled. Grid sampling: nine configurations are the whole
question. Watch val/map_small.
"""

from optuna.samplers import GridSampler

from pipeline.config import scaled_value

SCALES = [1.25, 1.5, 2.0]
CHANGED = ["input", "input+anchors", "anchors"]
FIXED = {"dataset": "shapes"}
FIXED_BY_PROFILE = {"quick": {"image_size": 128}}
TRIALS = {"chapter": 10, "quick": 10}
OBJECTIVE = "val/map"


def space(trial, base):
    scale = trial.suggest_categorical("scale", SCALES)
    changed = trial.suggest_categorical("changed", CHANGED)
    out = {}
    if changed != "anchors":
        out["image_size"] = scaled_value("image_size", base.image_size, scale)
    if changed != "input":
        out["anchor_scale"] = base.anchor_scale / scale
    return out


def sampler(seed):
    return GridSampler({"scale": SCALES, "changed": CHANGED}, seed=seed)
