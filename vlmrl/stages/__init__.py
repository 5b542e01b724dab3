"""Stage drivers: what turns a recipe into a trained checkpoint or a report.

The layer above the algorithms (vlmrl.train, vlmrl.eval) and the recipes; the `vlmrl`
command and the Dagster assets call these.

- :mod:`~vlmrl.stages.training`: base model -> SFT checkpoint -> RL checkpoint, each with
  lineage, atomic writes and resume.
- :mod:`~vlmrl.stages.evaluation`: evaluate a checkpoint with a recipe's settings and prompt.
- :mod:`~vlmrl.stages.headroom`: the SFT model's pass@1 / pass@k on the RL split before RL.
- :mod:`~vlmrl.stages.ablation`: GRPO vs T-GRPO vs Reg-GRPO over seeds from one SFT checkpoint.

Import the modules directly: they load torch and transformers.
"""
