"""Kubeflow pipelines that only wire components (DESIGN.md §2–3): ``full``, ``curation``, ``evaluation``.

* ``full.py``, ``curation.py``, ``evaluation.py`` — the definitions (``build(cluster, cache_key=)``);
* ``catalog.py`` — the pipelines by name, typed parameters, compilation to IR YAML;
* ``cluster.py`` — the cluster settings (image, GPUs, scheduling, PVC, secrets, retries), in one place;
* ``local.py`` — local runs (``kfp.local``) with the fingerprint cache; ``submit.py`` — ``--host`` runs
  (both open the MLflow parent run through :mod:`worldloop.platform.tracking`).
"""
