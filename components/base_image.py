"""The base image of every KFP component (``infra/docker/Dockerfile.component``: the project installed).

A default for the component decorators; the pipelines set the configured image per task
(``worldloop.pipelines.cluster``). Stdlib only: component modules import it at top level.
"""

IMAGE = "ghcr.io/worldloop/worldloop:0.1.0"
