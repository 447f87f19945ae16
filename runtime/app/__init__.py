"""The composition root: where a run is put together from the layers below it.

- :mod:`runtime.app.config`: the typed run configuration (YAML), assembled from the
  component registries;
- :mod:`runtime.app.parts` and :mod:`runtime.app.build`: a run's policy, strategy,
  verifiers and tasks built from a config, and the runtime from them, in this process
  or on Ray rollout workers (:mod:`runtime.app.cluster`); :mod:`runtime.app.learning`
  builds the online loop of a config with a ``learner:`` section;
- :mod:`runtime.app.cli`: the ``searchlearn`` command line interface (CLI: run, show,
  export, report, plot, fetch, components), the package's only module that configures logging;
- :mod:`runtime.app.dataset_export` and :mod:`runtime.app.report`: a run's episodes as
  training datasets in TRL's layouts (``export --format``), and as one HTML page;
- :mod:`runtime.app.plot`, :mod:`runtime.app.models` and :mod:`runtime.app.reference`:
  a learning run's curve as a PNG, pretrained checkpoints for ``searchlearn fetch``, and
  the generated configuration reference (``docs/configuration.md``).

It is the top layer (``.importlinter``): the only runtime code that may import the
``strategies`` and ``learners`` packages, and nothing in them or below imports it.
"""
