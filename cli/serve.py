"""``flux-service serve``: the HTTP service under uvicorn (with the slow-client guards), or through Ray Serve.

SIGTERM drains in the app first (app/jobs/shutdown.py: the running image gets ``FLUX_SHUTDOWN_GRACE_S``);
uvicorn's own wait afterwards only has finished responses to flush. Under ``--ray`` the same drain runs in the
Ray ingress, then our application and (unless ``RAY_ADDRESS`` joined a cluster) our private Ray instance stop
(app/ray_serve/lifecycle.py).
"""

from __future__ import annotations

import sys

from cli.common import model_opts, settings_for


def cmd_serve(args) -> int:
    import uvicorn

    from app.http.server_guard import server_options
    from app.jobs.shutdown import SERVER_CLOSE_S
    from app.main import create_app

    settings = settings_for(args).model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port))
                                                  if v is not None})
    if args.ray:  # the same app behind Ray Serve's proxy, N engine replicas (app/ray_serve, docs/deploy.md)
        try:
            from app.ray_serve import serve_forever
        except ImportError as exc:
            print(f"error: --ray needs Ray Serve ({exc}); install it with pip install -e '.[ray]'", file=sys.stderr)
            return 2
        # every Ray worker of ours quiets the libraries' start-up noise as this process did (cli/console.py)
        hook = None if args.verbose else "cli.console.quiet_third_party"
        return serve_forever(settings, args.replicas if args.replicas is not None else settings.ray_replicas,
                             setup_hook=hook)
    # SIGTERM drains in the app first (app/jobs/shutdown.py: the running image gets FLUX_SHUTDOWN_GRACE_S); uvicorn's
    # own wait afterwards only has finished responses to flush
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                timeout_graceful_shutdown=SERVER_CLOSE_S,
                **server_options(settings))  # header/body timeouts, connection limit (app/http/server_guard.py)
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="start the HTTP service (POST /api/generate-image, web page at /)")
    s.add_argument("--host", help="bind address (FLUX_HOST, default 127.0.0.1; 0.0.0.0: every interface, reached by "
                                  "IP address, or by the names in FLUX_ALLOWED_HOSTS)")
    s.add_argument("--port", type=int, help="port (FLUX_PORT, default 8000)")
    s.add_argument("--log-level", dest="log_level", default="info")
    s.add_argument("--ray", action="store_true",
                   help="serve through Ray Serve: a private local Ray instance, or the cluster at RAY_ADDRESS (needs "
                        "the 'ray' extra; see docs/deploy.md)")
    s.add_argument("--replicas", type=int, help="with --ray: engine replicas, FLUX_RAY_GPUS_PER_REPLICA GPUs each on CUDA "
                        "(FLUX_RAY_REPLICAS); more than the cluster's GPUs hold stops start-up")
    model_opts(s)
    s.set_defaults(func=cmd_serve)

