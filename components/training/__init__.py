"""Training stages as platform jobs: data loading, MLflow tracking, the ``worldloop train`` runner."""
