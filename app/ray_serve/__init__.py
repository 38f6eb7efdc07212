"""Scale-out through Ray Serve: the same service (every ``create_app`` route, the page, the docs) in front of
N engine replicas, one ``FluxEngine`` each (one GPU each on CUDA), with requests routed by their LoRA.

One face: ``build_app(args)`` (the Serve application, also the ``import_path`` of deploy/serve_config.yaml)
and ``serve_forever(settings, replicas)`` (``flux-service serve --ray``). Everything else here is detail:
``engine_deployment`` (the replicas), ``ray_worker`` (the ingress side of a generation), ``planning``
(validation in the ingress without model weights), ``ingress`` (the Serve wrapper around ``create_app``).
Import this package only where Ray is installed (``pip install -e '.[ray]'``).
"""

from app.ray_serve.launch import build_app, serve_forever

__all__ = ["build_app", "serve_forever"]
