"""Probes of ``POST /api/trainings``: hostile uploads, names, values, decompression bombs (issue 17 items 2-7,
13-15, 18, 19). Every refused request must be a 4xx naming the field, before a 202 and before anything is
decoded; the memory probes sample the server's resident memory while they run."""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import struct
import threading
import time
import zipfile
import zlib

import httpx
import numpy as np
from PIL import Image

from bench.probes import Failed, Probe, Server, Target
from bench.stats import rss_mib

#: growth of the server's resident memory a bomb may cause (the check holds about FLUX_TRAINING_MAX_FILE_BYTES
#: + 8 bytes per allowed pixel at worst; the bombs below are refused before either is reached)
RSS_BOUND_MIB = 150


def red_photos(n: int = 4) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a = np.clip(np.full((64, 64, 3), (220, 20, 20)) + rng.integers(-20, 21, (64, 64, 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(a.astype(np.uint8)).save(buf, "PNG")
        out.append((f"p{i}.png", buf.getvalue()))
    return out


def png_bomb(width: int, height: int) -> bytes:
    """A 1-bit PNG of width x height pixels, a few KB (IHDR + one IDAT of zero rows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def zip_bomb(member_mib: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in red_photos():
            zf.writestr(name, data)
        with zf.open("huge.png", "w") as f:
            block = b"\0" * 1024**2
            for _ in range(member_mib):
                f.write(block)
    return buf.getvalue()


def _multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    """Written byte for byte (a client library would escape a NUL in a file name)."""
    b = "adversary" + secrets.token_hex(4)
    parts = [f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + v.encode() + b"\r\n"
             for k, v in fields.items()]
    parts += [f'--{b}\r\nContent-Disposition: form-data; name="photos"; filename="'.encode() + n.encode()
              + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + d + b"\r\n" for n, d in files]
    return b"".join(parts) + f"--{b}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={b}"}


def _post(server: Server, fields: dict[str, str], files: list[tuple[str, bytes]]) -> httpx.Response:
    body, headers = _multipart(fields, files)
    with server.client(timeout=120) as c:
        return c.post("/api/trainings", content=body, headers=headers)


def _expect(r: httpx.Response, status: int, param: str | None, what: str) -> dict:
    try:
        err = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise Failed(f"{what}: {r.status_code} without the error envelope: {r.text[:200]}") from None
    if r.status_code != status or (param is not None and err.get("param") != param):
        raise Failed(f"{what}: answered {r.status_code} param={err.get('param')!r} ({err.get('message', '')[:160]}), "
                     f"expected {status} naming {param!r}")
    return err


class RssGrowth:
    """The server's resident memory, sampled every 20 ms while the block runs: growth over the start."""

    def __init__(self, pid: int) -> None:
        self.pid, self.start, self.peak = pid, rss_mib(pid), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> "RssGrowth":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> float:
        return max(0.0, self.peak - self.start)


OK = {"name": "probe", "trigger": "ohwx"}


def nul_in_trigger_or_task(target: Target) -> None:
    server = target.server()
    for field, value in (("trigger", "ohwx\0"), ("task", "probe\0face")):
        _expect(_post(server, {**OK, field: value}, red_photos()), 422, field, f"{field} with a NUL")


def careless_values_are_refused_before_202(target: Target) -> None:
    server = target.server()
    cases = [("task", "a/b"), ("task", "../x"), ("task", "主持人"), ("task", "x" * 100), ("task", "a b"),
             ("task", "--overwrite-task"), ("trigger", "--resume"), ("strength", "5"), ("strength", "nan"),
             ("resolution", "abc"), ("resolution", "64,"), ("name", "anna\n"), ("steps", "1e9")]
    for field, value in cases:
        _expect(_post(server, {**OK, field: value}, red_photos()), 422, field, f"{field}={value!r}")


def bad_filenames_are_422(target: Target) -> None:
    server = target.server()
    photos = red_photos()
    for name in ("x\0.png", "x" * 300 + ".png"):
        _expect(_post(server, OK, photos + [(name, photos[0][1])]), 422, "photos", f"file name {name[:12]!r}...")
    err = _expect(_post(server, OK, photos + [("a/x.png", photos[0][1]), ("b/x.png", photos[1][1])]), 422,
                  "photos", "a/x.png + b/x.png")
    if "a/x.png" not in err["message"] or "b/x.png" not in err["message"]:
        raise Failed(f"duplicate names: not both named: {err['message'][:200]}")


def registered_lora_name_is_409(target: Target) -> None:
    server = target.server()
    err = _expect(_post(server, {"name": "host_person", "trigger": "ohwx"}, red_photos()), 409, "name", "host_person")
    if "host_face" not in err["message"] or "character_face" not in err["message"]:
        raise Failed(f"409 does not name the tasks serving host_person: {err['message'][:200]}")


def no_server_paths_in_messages(target: Target) -> None:
    server = target.server()
    messages = [
        _expect(_post(server, {"name": "host_person", "trigger": "ohwx"}, red_photos()), 409, "name", "host_person"),
        _expect(_post(server, OK, [("set.zip", b"PK\3\4 not a zip")]), 422, "photos", "a broken zip"),
        _expect(_post(server, OK, red_photos() + [("junk.jpg", b"junk")]), 422, "photos", "a junk photo"),
        _expect(_post(server, {**OK, "task": "host_face"}, red_photos()), 409, "task", "an existing task"),
    ]
    for err in messages:
        if str(server.data_dir) in err["message"] or os.sep + "tmp" + os.sep in err["message"]:
            raise Failed(f"a server path in a message: {err['message'][:200]}")
    if "skip_bad" not in messages[2]["message"]:
        raise Failed(f"invalid_dataset does not say how an HTTP client skips bad photos: {messages[2]['message'][:200]}")


def thousand_and_one_files_are_413(target: Target) -> None:
    server = target.server()
    err = _expect(_post(server, OK, [(f"c{i}.txt", b"x") for i in range(1001)]), 413, "photos", "1001 files")
    if "1000" not in err["message"]:
        raise Failed(f"413 does not name the limit: {err['message'][:200]}")


def png_bomb_is_refused_from_its_header(target: Target) -> None:
    server = target.server()
    bomb = png_bomb(13000, 13000)
    with RssGrowth(server.proc.pid) as rss:
        err = _expect(_post(server, OK, red_photos() + [("bomb.png", bomb)]), 422, "photos", "13000x13000 PNG")
    if "bomb.png" not in err["message"]:
        raise Failed(f"the bomb is not named: {err['message'][:200]}")
    print(f"    png bomb ({len(bomb) // 1024} KB, 13000x13000): server RSS {rss.start:.0f} MiB, +{rss.growth:.0f} MiB")
    if rss.growth > RSS_BOUND_MIB:
        raise Failed(f"a {len(bomb) // 1024} KB PNG grew the server by {rss.growth:.0f} MiB")


def zip_bombs_in_parallel_stay_bounded(target: Target) -> None:
    """One 0.5 MB zip with a 400 MB member peaked at +735 MB; four at once must not add up."""
    server = target.server()
    bomb = zip_bomb(400)
    results: list[httpx.Response] = []

    def send(i: int) -> None:  # one name each: the same name would be 409 before the zip is opened
        results.append(_post(server, {"name": f"zipbomb{i}", "trigger": "ohwx"}, [("set.zip", bomb)]))

    with RssGrowth(server.proc.pid) as rss:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for r in results:
        err = _expect(r, 422, "photos", "zip with a 400 MB member")
        if "huge.png" not in err["message"]:
            raise Failed(f"the member is not named: {err['message'][:200]}")
    print(f"    4 zips ({len(bomb) // 1024} KB, one 400 MB member) at once: server RSS {rss.start:.0f} MiB, "
          f"+{rss.growth:.0f} MiB")
    if rss.growth > RSS_BOUND_MIB:
        raise Failed(f"four {len(bomb) // 1024} KB zips grew the server by {rss.growth:.0f} MiB")


def api_key_is_checked_before_the_upload(target: Target) -> None:
    """With FLUX_API_KEY set, an unauthenticated 246 MB upload was read whole before its 401."""
    server = target.server(FLUX_API_KEY="adversary-key")
    size = 246 * 1024**2
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST /api/trainings HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: multipart/"
                  f"form-data; boundary=x\r\nContent-Length: {size}\r\n\r\n".encode() + b"\0" * 65536)
        started, answer = time.monotonic(), b""
        while b"\r\n\r\n" not in answer and time.monotonic() - started < 10:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    if not answer.startswith(b"HTTP/1.1 401"):
        raise Failed(f"after 64 KiB of a 246 MB unauthenticated upload: {answer[:80]!r} (expected 401 at once)")


def parallel_posts_of_one_name_queue_one(target: Target) -> None:
    server = target.server()
    name = "probe" + secrets.token_hex(3)
    results: list[httpx.Response] = []
    barrier = threading.Barrier(3)

    def send() -> None:
        barrier.wait()
        results.append(_post(server, {"name": name, "trigger": "ohwx", "steps": "2"}, red_photos()))

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    with server.client() as c:
        for r in results:
            if r.status_code == 202:
                c.delete(f"/api/trainings/{r.json()['id']}")
    if codes != [202, 409, 409]:
        raise Failed(f"three parallel POSTs with one name answered {codes}, expected one 202 and two 409")


def a_run_that_cannot_start_does_not_block_the_queue(target: Target) -> None:
    """A queued run with a NUL in its trigger (as an older version accepted) looped the supervisor 5 times
    a second and blocked every later run, across restarts."""
    server = target.server(fresh=True)
    folder = server.data_dir / "trainings" / "tr_00bad"
    (folder / "photos").mkdir(parents=True)
    run = {"id": "tr_00bad", "status": "queued", "created": time.time(), "name": "probe", "trigger": "ohwx\0",
           "task": None, "strength": 1.0, "overwrite_task": False, "source": "photos",
           "config": {"steps": 2, "rank": 4, "alpha": 4.0, "lr": 0.01, "resolutions": [64], "seed": 0},
           "dataset": {}, "attempts": 0, "cancel_requested": False, "error": None, "exit_code": None}
    (folder / "run.json").write_text(json.dumps(run), encoding="utf-8")
    with server.client() as c:
        end = time.monotonic() + 20
        state = {}
        while time.monotonic() < end:
            state = c.get("/api/trainings/tr_00bad").json()
            if state.get("status") != "queued":
                break
            time.sleep(0.3)
    if state.get("status") != "failed" or (state.get("error") or {}).get("param") != "trigger":
        raise Failed(f"the unstartable run is {state.get('status')!r} with error {state.get('error')!r}")
    loops = server.log_tail(200_000).count("supervisor error")
    if loops:
        raise Failed(f"the supervisor logged {loops} errors")


def thirty_event_subscribers_cost_little(target: Target) -> None:
    """30 subscribers to a running training cost 0.28 of a core (each re-read the run's files 4x/s)."""
    server = target.server()
    with server.client(timeout=120) as c:
        r = _post(server, {"name": "probe" + secrets.token_hex(3), "trigger": "ohwx", "steps": "100000"}, red_photos())
        if r.status_code != 202:
            raise Failed(f"could not start a training to follow: {r.status_code} {r.text[:200]}")
        run_id = r.json()["id"]
        stop = threading.Event()

        def follow() -> None:
            with httpx.Client(base_url=server.url, timeout=None) as s, \
                    s.stream("GET", f"/api/trainings/{run_id}/events") as resp:
                for _ in resp.iter_lines():
                    if stop.is_set():
                        return

        try:
            end = time.monotonic() + 120
            while c.get(f"/api/trainings/{run_id}").json()["status"] != "running" and time.monotonic() < end:
                time.sleep(0.5)
            threads = [threading.Thread(target=follow, daemon=True) for _ in range(30)]
            for t in threads:
                t.start()
            time.sleep(3)
            t0, cpu0 = time.monotonic(), _cpu_s(server.proc.pid)
            time.sleep(10)
            share = (_cpu_s(server.proc.pid) - cpu0) / (time.monotonic() - t0)
        finally:
            stop.set()
            c.delete(f"/api/trainings/{run_id}")
    print(f"    30 subscribers to a running training: server process {share:.3f} cores")
    if share > 0.1:
        raise Failed(f"the server used {share:.2f} of a core with 30 event subscribers")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PROBES = [
    Probe("training: NUL in trigger or task is refused before a 202", nul_in_trigger_or_task, "high"),
    Probe("training: a run that cannot start fails, the queue moves on", a_run_that_cannot_start_does_not_block_the_queue,
          "high", destructive=True, slow=True),
    Probe("training: a registered LoRA's name (host_person) is 409 naming its tasks", registered_lora_name_is_409),
    Probe("training: bad file names (NUL, 300 chars, duplicates) are 422", bad_filenames_are_422),
    Probe("training: careless names and values are 422 before a 202", careless_values_are_refused_before_202),
    Probe("training: three parallel POSTs of one name queue one", parallel_posts_of_one_name_queue_one, slow=True),
    Probe("training: a 13000x13000 PNG bomb is refused from its header", png_bomb_is_refused_from_its_header),
    Probe("training: four zips with a 400 MB member at once stay bounded", zip_bombs_in_parallel_stay_bounded,
          slow=True),
    Probe("training: no server path in messages; skip_bad is offered", no_server_paths_in_messages, "low"),
    Probe("training: API key checked before a 246 MB upload is read", api_key_is_checked_before_the_upload, "low"),
    Probe("training: 1001 files are 413 naming the limit", thousand_and_one_files_are_413, "low"),
    Probe("training: 30 event subscribers cost under 0.1 core", thirty_event_subscribers_cost_little, "low", slow=True),
]
