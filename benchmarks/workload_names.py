"""The benchmark's workload names, shared by `bench_api.py` (standard library only) and `workloads.py`."""

WORKLOADS = (
    "prior_forward",
    "prior_forward_cfg",
    "prior_train_step",
    "prior_sample_ddim",
    "unet_forward",
    "unet_forward_cfg",
    "unet_train_step",
    "unet_train_step_image_cond",
    "decoder_sample_ddim",
)

#: Sampling runs different (on purpose) DDIM schedules on the two sides: outputs are not comparable,
#: and the sampling loop warms itself up.
SAMPLING_WORKLOADS = ("prior_sample_ddim", "decoder_sample_ddim")
