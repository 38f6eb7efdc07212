"""Probes of the HTTP surface: authentication, origins, hosts, request bodies, the contract."""

from __future__ import annotations

from bench.probes import Failed, Probe, Target

API_ROUTES = [("POST", "/api/generate-image"), ("POST", "/api/jobs"), ("GET", "/api/jobs/x"),
              ("DELETE", "/api/jobs/x"), ("GET", "/api/tasks"), ("GET", "/api/loras"), ("GET", "/api/trainings"),
              ("POST", "/api/trainings")]


def api_key_on_every_api_route(target: Target) -> None:
    server = target.server(FLUX_API_KEY="adversary-key")
    with server.client(headers={"Authorization": "Bearer wrong"}) as c:
        for method, path in API_ROUTES:
            r = c.request(method, path)
            if r.status_code != 401:
                raise Failed(f"{method} {path} with a wrong key answered {r.status_code}, not 401")


def foreign_origin_is_refused(target: Target) -> None:
    server = target.server()
    with server.client(headers={"Origin": "http://evil.example"}) as c:
        r = c.post("/api/generate-image", data={"prompt": "x", "width": "16", "height": "16"})
        if r.status_code != 403:
            raise Failed(f"a foreign Origin got {r.status_code}, not 403")


PROBES = [
    Probe("API key required on every /api route", api_key_on_every_api_route, "high"),
    Probe("a foreign Origin gets 403 before any work", foreign_origin_is_refused, "high"),
]
