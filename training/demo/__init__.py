"""The procedural demo world: ray-traced scenes, the teacher trained on them, a biased
single-view dataset for stage 2, the report and the inversion study."""
