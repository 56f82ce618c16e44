"""kubetune's trainer: the program every worker pod runs under torchrun.

`python -m kubetune_trainer [CONFIG]` reads the job (the operator's config.json,
a FineTuneJob manifest, or a developer's trainer config), stages the model,
sets up the process group (nccl on GPU, gloo on CPU: the same code path),
trains with DeepSpeed while checkpoints stream to S3 (streaming.py; layout in
manifest.py), reports progress on the FineTuneJob (progress.py), and publishes
the final model. The core modules take the trainer's own typed config
(`config.TrainConfig`); `spec_adapter` is the one place that reads the shared
FineTuneJob spec.
"""
