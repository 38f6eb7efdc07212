"""Reading ``POST /api/trainings``'s multipart body: photos spooled to disk, fields as text, limits ours.

Why not FastAPI's ``File``/``Form`` parameters (issue 17): they parse with Starlette's fixed limits (1001 files
answered 400, a status our contract does not have), keep every part under 1 MB in memory (a 512 MiB upload of
small files is 512 MiB of RAM), drop unknown fields silently, and read the whole body before any dependency
(the API key) runs. Here the parser keeps parts over 64 KiB on disk, refuses more than
``FLUX_TRAINING_MAX_FILES`` files with 413 as soon as the one too many begins, and hands the route text
fields (each at most once; unknown ones are refused by ``training.options.parse_options``) and the files.
"""

from __future__ import annotations

from typing import BinaryIO

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from pipelines.errors import InvalidRequest
from training.errors import DatasetTooLarge, TrainingConfigError
from training.options import FIELDS


class _UploadParser(MultiPartParser):
    spool_max_size = 64 * 1024  # a part bigger than this waits on disk, not in memory

    def __init__(self, request: Request, max_files: int) -> None:
        super().__init__(request.headers, request.stream(), max_files=float("inf"), max_fields=2 * len(FIELDS),
                         max_part_size=64 * 1024)
        self.file_limit = max_files

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        if self._current_files > self.file_limit:
            raise DatasetTooLarge(f"more than {self.file_limit} files were uploaded; at most {self.file_limit} photos "
                                  "and captions are accepted (FLUX_TRAINING_MAX_FILES); send fewer, or one .zip")


async def read_training_form(request: Request, max_files: int) -> tuple[dict[str, str], list[tuple[str, BinaryIO]],
                                                                         FormData]:
    """(text fields, [(file name, file)], the form to ``close()`` when done). 422 for a body that is not
    multipart or is malformed, a field sent twice, a file under a text field's name or text as ``photos``."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise TrainingConfigError("send multipart/form-data: the photos as `photos` files (or one .zip) and the "
                                  "options as fields, e.g. curl -F photos=@a.jpg -F name=anna -F trigger=ohwx",
                                  param="photos")
    try:
        form = await _UploadParser(request, max_files).parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"the multipart body cannot be read: {exc.message}") from None
    fields: dict[str, str] = {}
    files: list[tuple[str, BinaryIO]] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "photos":
                    raise TrainingConfigError(f"`{key}` must be a text field, not a file", param=key)
                files.append((value.filename or "", value.file))
            elif key == "photos":
                raise TrainingConfigError("`photos` must be files (images with optional .txt captions, or one .zip), "
                                          "not text", param="photos")
            elif key in fields:
                raise TrainingConfigError(f"`{key}` was sent twice; send each field once", param=key)
            else:
                fields[key] = value
    except BaseException:
        await form.close()
        raise
    return fields, files, form
