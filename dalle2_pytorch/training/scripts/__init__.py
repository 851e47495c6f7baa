"""The logic of the training scripts `train_prior.py` and `train_decoder.py`.

* :mod:`.cli` — command-line options, config loading with `--override`, `ConfigError`;
* :mod:`.runtime` — accelerator, seeding, run folder, `metrics.jsonl`, resume state, signals;
* :mod:`.clip_loading` — the CLIP adapter of a config (including saved x-clip folders);
* :mod:`.prior_data`, :mod:`.prior_script` — the prior run;
* :mod:`.decoder_data`, :mod:`.decoder_script`, :mod:`.image_metrics` — the decoder run;
* :mod:`.tiny_data` — inputs of the tiny CPU configs.

Import the submodules directly (`from dalle2_pytorch.training.scripts.prior_script import main`).
"""
