"""``srft compare``: train a suite of methods side by side and report them together.

- ``suite``: the comparison suites (YAML: seeds, common overrides, base-model regimes, methods);
- ``plan``: the runs of a suite, their commands, and the checks made before anything runs;
- ``runner``: runs them as ``srft train`` subprocesses, resumably, a few at a time;
- ``report``: aggregates finished runs into ``compare.md`` / ``compare.json``;
- ``curves``: the per-regime curve plots;
- ``command``: the ``srft compare`` command that ties these together.
"""
