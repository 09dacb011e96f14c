#!/usr/bin/env python3
"""Reads txflow's archive as any tool outside txflow would: every Avro container file in an
S3 bucket (boto3) or under a directory (the archiver's `file://` storage), with the schema
each file carries, and nothing of txflow's own code.

    python3 examples/python/read_archive.py s3://books/txflow --endpoint http://127.0.0.1:7070
    python3 examples/python/read_archive.py /var/lib/txflow/archive --topic txflow.results

Credentials for S3 come from boto3's usual places (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role).

Prints one JSON line per archived record: topic, partition, offset, timestamp (ms), key and
value (hex) and `decoded`, the event or result as the archiver decoded it. Files are read in
key order, so each partition's records come in offset order.
"""

import argparse
import io
import json
import pathlib
import sys

import fastavro


def files_in_directory(root: pathlib.Path, topic: str | None):
    base = root / topic if topic else root
    for path in sorted(base.rglob("*.avro")):
        yield path.relative_to(root).as_posix(), path.read_bytes()


def files_in_bucket(url: str, endpoint: str | None, topic: str | None):
    import boto3

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    prefix = f"{prefix}/" if prefix else ""
    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix + (f"{topic}/" if topic else "")):
        keys.extend(o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".avro"))
    for key in sorted(keys):
        yield key[len(prefix):], s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def records(files):
    for key, content in files:
        for record in fastavro.reader(io.BytesIO(content)):
            yield key, record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", help="s3://BUCKET[/PREFIX], or the archive's directory")
    parser.add_argument("--endpoint", help="an S3-compatible server's URL (default: AWS)")
    parser.add_argument("--topic", help="only this topic's files")
    args = parser.parse_args()
    if args.archive.startswith("s3://"):
        files = files_in_bucket(args.archive, args.endpoint, args.topic)
    elif pathlib.Path(args.archive).is_dir():
        files = files_in_directory(pathlib.Path(args.archive), args.topic)
    else:
        print(f"{args.archive} is neither s3://BUCKET[/PREFIX] nor a directory", file=sys.stderr)
        return 2
    for key, record in records(files):
        timestamp = record["timestamp"]
        print(json.dumps({
            "file": key,
            "topic": record["topic"],
            "partition": record["partition"],
            "offset": record["offset"],
            # fastavro gives timestamp-millis as a datetime.
            "timestamp": None if timestamp is None else int(timestamp.timestamp() * 1000),
            "key": None if record["key"] is None else record["key"].hex(),
            "value": None if record["value"] is None else record["value"].hex(),
            "decoded": None if record["decoded"] is None else json.loads(record["decoded"]),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
