"""vlmrl: reinforcement fine-tuning of video and vision-language models.

The library is plain Python (no Dagster import anywhere in it); ``orchestration``
wraps it as a Dagster asset graph. Layers, bottom up: ``data``, ``rewards``, ``models``
-> ``train``, ``eval``, ``lineage`` -> ``recipes`` -> ``stages`` -> ``cli``, ``doctor``
(docs/architecture.md; pinned by tests/test_layers.py).
"""

__version__ = "0.1.0"
