"""kubetune's trainer: the program every worker pod runs under torchrun.

`python -m kubetune_trainer [CONFIG]` reads the job (a FineTuneJob manifest:
the operator's config.json, or one a developer runs by hand), stages the model,
sets up the process group (nccl on GPU, gloo on CPU: the same code path),
trains with DeepSpeed while checkpoints stream to storage (streaming.py; layout
in manifest.py), reports progress on the FineTuneJob (progress.py), and
publishes the final model. Every module works from the shared spec
(kubetune_api.FineTuneJobSpec) and the numbers kubetune_api derives from it;
what is known only at run time is in context.RunContext.
"""
