"""vlmrl: reinforcement fine-tuning of video and vision-language models.

The library is plain Python (no Dagster import anywhere in it); ``orchestration``
wraps it as a Dagster asset graph. Pipeline order: ``vlmrl.data`` -> ``vlmrl.rewards``
-> ``vlmrl.models`` -> ``vlmrl.train`` -> ``vlmrl.eval`` -> ``vlmrl.lineage``.
"""

__version__ = "0.1.0"
