"""The Ray Serve application builder (DESIGN.md §9): a CPU ingress in front of the generator.

``build_app`` is what every launcher uses — ``worldloop serve run``, ``serve run
worldloop.serving.app:build_app model=... sp=2`` and the KubeRay ``RayService`` (``import_path:
worldloop.serving.app:build_app`` with ``args``) — so a cluster runs exactly what runs locally. Its
arguments are validated here, once, into :class:`ServeOptions` (the model URI parsed with them); the
deployments receive the typed objects. The routes: :mod:`.ingress`; the generator: :mod:`.generator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError
from ray import serve

from worldloop.serving.config import EngineConfig
from worldloop.serving.generator import Generator
from worldloop.serving.ingress import Ingress

MAX_STREAMS_HINT = 16  # concurrent sessions a generator replica expects; sizes its request queue


class ServeOptions(EngineConfig):
    """``build_app`` arguments: the engine's plus replica/placement settings (strings are coerced)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replicas: int = Field(1, ge=1, description="Generator replicas (the minimum when autoscaling).")
    max_replicas: int | None = Field(None, ge=1, description="Autoscale up to this many replicas.")
    sessions_per_replica: int = Field(
        4, ge=1, description="Autoscaling target: concurrent sessions' requests per replica."
    )
    gpus_per_worker: float | None = Field(
        None, ge=0, description="GPUs reserved per worker (default: 1 when device=cuda, else 0)."
    )
    ingress_cpus: float = Field(1.0, gt=0, description="CPUs reserved by the ingress replica.")
    poll_s: float = Field(30.0, gt=0, description="Registry polling period for models:/NAME@ALIAS.")
    name: Literal["worldloop"] = "worldloop"

    @property
    def engine(self) -> EngineConfig:
        """The engine's part, as the generator takes it (its fields were validated with these)."""
        return EngineConfig.model_construct(
            **{name: getattr(self, name) for name in EngineConfig.model_fields}
        )

    @classmethod
    def parse(cls, args: ServeOptions | Mapping[str, Any]) -> ServeOptions:
        """``args`` validated (ValueError naming the bad field); ServeOptions pass through as they are."""
        if isinstance(args, ServeOptions):
            return args
        try:
            return cls.model_validate(dict(args))
        except ValidationError as err:
            raise ValueError(f"worldloop serve arguments: {err}") from None


def deployment_options(opts: ServeOptions) -> dict[str, Any]:
    """The generator's Ray Serve options: one device per worker, N workers packed on one node."""
    gpus = (
        opts.gpus_per_worker if opts.gpus_per_worker is not None else (1.0 if opts.device == "cuda" else 0.0)
    )
    options: dict[str, Any] = {
        "max_ongoing_requests": 4 * MAX_STREAMS_HINT,
        "health_check_period_s": 10,
        "health_check_timeout_s": 120,
        "graceful_shutdown_timeout_s": 10,
    }
    if opts.max_replicas is not None and opts.max_replicas > opts.replicas:
        options["autoscaling_config"] = {
            "min_replicas": opts.replicas,
            "max_replicas": opts.max_replicas,
            "target_ongoing_requests": opts.sessions_per_replica,
        }
    else:
        options["num_replicas"] = opts.replicas
    if opts.sp == 1:
        options["ray_actor_options"] = {"num_cpus": 1, "num_gpus": gpus}
    else:  # bundle 0: the replica (CPU); bundles 1..N: the sequence-parallel workers, one device each
        worker: dict[str, float] = {"CPU": 1.0, **({"GPU": gpus} if gpus else {})}
        options["ray_actor_options"] = {"num_cpus": 0.5}
        options["placement_group_bundles"] = [{"CPU": 0.5}] + [worker] * opts.sp
        options["placement_group_strategy"] = "STRICT_PACK"
    return options


def build_app(
    args: ServeOptions | Mapping[str, Any], *, settings: dict[str, Any] | None = None
) -> serve.Application:
    """Ray Serve application builder: ``args`` are :class:`ServeOptions` (or its fields, e.g. from
    serveConfigV2, validated here).

    ``settings`` overrides the ingress's :class:`~worldloop.settings.Settings` (tests); deployments take
    them from the environment, so API keys never travel in a serve config.
    """
    opts = ServeOptions.parse(args)
    generator = serve.deployment(name="Generator", **deployment_options(opts))(Generator)
    ingress = serve.deployment(
        name="Ingress", num_replicas=1, ray_actor_options={"num_cpus": opts.ingress_cpus}
    )(Ingress)
    return ingress.bind(generator.bind(opts.engine, poll_s=opts.poll_s), settings)
