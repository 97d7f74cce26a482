"""Local stand-ins for the Databricks SQL functions the templates in sql/ call.

On Databricks the built-ins run; on a laptop these are registered in the Spark session under
the same names, so the same template text runs in both places:

- `read_files(path, format => 'binaryFile', recursiveFileLookup => true)`: a Python UDTF
  yielding path, modificationTime, length, content like the binaryFile source (same `file:`
  paths; names starting with `_` or `.` skipped as Spark does). It reads local folders only,
  and, unlike the built-in, reads every file's bytes.
- `ai_query(endpoint, request, returnType, failOnError, modelParameters, responseFormat,
  files)`: a pandas UDF calling the configured endpoint with this project's client (so its
  retries and bounded concurrency). It always returns the `failOnError => false` shape,
  STRUCT<result STRING, errorMessage STRING>: the Databricks ai_query page describes that
  shape but names no fields, so these names are our best reading.
  With failOnError => true it raises on the first failed row instead. `modelParameters`
  fields max_tokens and temperature are sent (NULL ones are left out); `responseFormat` is a
  JSON string, either a response_format object or a bare JSON schema. `files` is one BINARY
  (documented) or an ARRAY<BINARY> (sql/caption_groups.sql; not in the documentation we could
  check): each element becomes one image of the request, in order.
  An answer is returned as the endpoint gave it, as the built-in returns the text only: one
  cut off at max_tokens (a structured one is then no JSON), refused (its text, often empty)
  or breaking the schema is a `result` like any other, with no error. No schema is checked
  here; `vision-batch run --mode sql` checks structured answers after the template
  (pipeline/runs/sql.py), which the bundle's SQL job and the notebook do not.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from datetime import datetime
from typing import cast

import pandas as pd
from PIL import Image, UnidentifiedImageError
from pyspark.sql import SparkSession
from pyspark.sql.functions import pandas_udf, udtf
from pyspark.sql.udtf import UserDefinedTableFunction

from pipeline.config import RunConfig
from pipeline.endpoint.auth import Credentials
from pipeline.endpoint.client import CallResult, CaptionClient, ClientSettings
from pipeline.endpoint.payloads import PromptSpec, caption_parser, chat_body, encode

AI_QUERY_RESULT = "struct<result:string,errorMessage:string>"
READ_FILES_SCHEMA = "path: string, modificationTime: timestamp, length: bigint, content: binary"


class ReadFiles:
    def eval(self, path: str, format: str | None = None, recursiveFileLookup=None):  # noqa: A002
        if format not in (None, "binaryFile"):
            raise ValueError("the local read_files stand-in reads format => 'binaryFile' only")
        root = path[len("file:"):] if path.startswith("file:") else path
        if "://" in root:
            raise ValueError("the local read_files stand-in reads local folders only")
        if not os.path.exists(root):
            raise FileNotFoundError(f"{path} does not exist")
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(("_", ".")))
            for name in sorted(names):
                if name.startswith(("_", ".")):
                    continue
                full = os.path.abspath(os.path.join(folder, name))
                status = os.stat(full)
                with open(full, "rb") as handle:
                    content = handle.read()
                # binaryFile reports modification times in milliseconds.
                modified = datetime.fromtimestamp(status.st_mtime_ns // 1_000_000 / 1000)
                yield "file:" + full, modified, status.st_size, content


def _mime(content: bytes | None) -> str:
    """The declared type of the bytes, as the built-in would infer it."""
    try:
        with Image.open(io.BytesIO(content or b"")) as img:
            return Image.MIME.get(img.format or "", "application/octet-stream")
    except (UnidentifiedImageError, OSError, ValueError):
        return "application/octet-stream"


def _contents(files) -> list[bytes]:
    """The images of one row's `files`: one BINARY, or an ARRAY<BINARY> (which Arrow hands
    over as a numpy array of bytes), in order; NULL, and NULL elements, send no image."""
    if files is None:
        return []
    if isinstance(files, (bytes, bytearray, memoryview)):
        return [bytes(files)]
    return [bytes(item) for item in files if item is not None]


def _response_schema(response_format: str | None) -> dict | None:
    if response_format is None:
        return None
    parsed = json.loads(response_format)
    if isinstance(parsed, dict) and parsed.get("type") == "json_schema":
        return parsed["json_schema"]["schema"]
    return parsed


def ai_query_udf(credentials: Credentials, config: RunConfig):
    def settings_for(endpoint: str) -> ClientSettings:
        url = credentials.host + config.chat_path.replace("{endpoint}", endpoint)
        return ClientSettings(url, credentials, config.request_timeout, config.max_attempts,
                              config.max_concurrency, config.max_rpm)

    model_in_body = "{endpoint}" not in config.chat_path

    async def answer_all(rows: list[tuple[str, bytes]]) -> list[CallResult]:
        by_endpoint: dict[str, CaptionClient] = {}
        try:
            for endpoint, _ in rows:
                if endpoint not in by_endpoint:
                    by_endpoint[endpoint] = await CaptionClient(settings_for(endpoint)).__aenter__()
            # Read as plain text whatever was asked: how the answer ended, and its shape,
            # are not ai_query's to judge (see the module docstring).
            return await asyncio.gather(
                *(by_endpoint[e].call(body, caption_parser("result", False)) for e, body in rows)
            )
        finally:
            for client in by_endpoint.values():
                await client.__aexit__(None, None, None)

    # PySpark's stubs type only the functionType forms, not a return type with type hints.
    @pandas_udf(AI_QUERY_RESULT)  # type: ignore[call-overload]
    def ai_query(
        endpoint: pd.Series,
        request: pd.Series,
        # The built-in's argument names; pandas UDF type hints cannot say "| None".
        returnType: pd.Series = None,  # noqa: N803
        failOnError: pd.Series = None,  # noqa: N803
        modelParameters: pd.DataFrame = None,  # noqa: N803
        responseFormat: pd.Series = None,  # noqa: N803
        files: pd.Series = None,
    ) -> pd.DataFrame:
        rows = []
        for i, (name, text) in enumerate(zip(endpoint, request, strict=True)):
            params = modelParameters.iloc[i].to_dict() if modelParameters is not None else {}
            spec = PromptSpec(
                text,
                int(params.get("max_tokens") or config.max_tokens),
                None if pd.isna(params.get("temperature")) else float(params["temperature"]),
                _response_schema(responseFormat.iloc[i] if responseFormat is not None else None),
            )
            images = [(_mime(c), c) for c in _contents(None if files is None else files.iloc[i])]
            model = name if model_in_body else None
            rows.append((name, encode(chat_body(spec, images, model))))
        results = asyncio.run(answer_all(rows))
        strict = failOnError is not None and bool(failOnError.iloc[0])
        if strict and any(not r.ok for r in results):
            raise RuntimeError(next(r.error_message for r in results if not r.ok))
        return pd.DataFrame(
            {
                "result": [r.answer.caption if r.ok else None for r in results],
                "errorMessage": [None if r.ok else r.error_message for r in results],
            }
        )

    return ai_query


def register(spark: SparkSession, credentials: Credentials, config: RunConfig) -> None:
    """Register `read_files` and `ai_query` in a local session (never on Databricks)."""
    # Wrapped here, not where the class is defined: the wrapper is a classic or a Spark
    # Connect UDTF depending on the session, which exists only now.
    # Given a class, udtf() returns the UDTF; its type also covers udtf() used as a decorator.
    read_files = cast(UserDefinedTableFunction, udtf(ReadFiles, returnType=READ_FILES_SCHEMA))
    spark.udtf.register("read_files", read_files)
    # Nondeterministic: Delta's MERGE then materializes its source once instead of calling
    # the endpoint again when it reads the source a second time.
    spark.udf.register("ai_query", ai_query_udf(credentials, config).asNondeterministic())
