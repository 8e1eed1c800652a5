"""The paper's analyses of finished runs: ``srft analyze``.

Modules:

- ``runs``: find the runs of a comparison directory (``REGIME/METHOD/seedS/eval.json``) and read them;
- ``responses``: a fixed set of (prompt, response) token sequences per regime, scored by every checkpoint;
- ``score``: per-token log-probabilities of a model on that set;
- ``token_shift``: how many token probabilities a method moved, and by how much;
- ``entropy``: rollout and demonstration entropy over training, per method;
- ``ckpt_map``: distances of the final checkpoints from the base model and a 2-D map of them;
- ``report``: the ``srft analyze`` pipeline, writing ``analysis.md``, ``analysis.json`` and PNGs.
"""

from srft.analysis.report import analyze_compare_dir, analyze_models

__all__ = ["analyze_compare_dir", "analyze_models"]
