#!/usr/bin/env python3
"""A read_committed consumer of txflow's results, written as any consumer outside txflow
would be: it sees only results of committed ledger transactions, and decodes the Confluent
wire format by the schema id each record carries.

    python3 examples/python/read_results.py --bootstrap 127.0.0.1:9092 \
        --topic txflow.results --expect 1000

With --schema-registry URL, the writer schema of each id comes from a Confluent-compatible
schema registry (confluent-kafka's AvroDeserializer) instead of schemas/schema-ids.json.

Prints one JSON line per result, and stops once it has read --expect results, or when no
result came for --idle seconds (exit code 1 if fewer than --expect arrived).
"""

import argparse
import io
import json
import pathlib
import struct
import sys
import time
import uuid

import fastavro
from confluent_kafka import Consumer, KafkaError

SCHEMAS = pathlib.Path(__file__).resolve().parents[2] / "schemas"


def schemas_by_id(schemas: pathlib.Path) -> dict:
    ids = json.loads((schemas / "schema-ids.json").read_text())
    return {int(i): fastavro.parse_schema(json.loads((schemas / f).read_text()))
            for i, f in ids.items()}


def decode(schemas: dict, value: bytes) -> dict:
    magic, schema_id = struct.unpack(">bI", value[:5])
    if magic != 0 or schema_id not in schemas:
        raise ValueError(f"not a record of a known schema (magic {magic}, id {schema_id})")
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), schemas[schema_id])


def epoch_millis(value) -> int:
    """A timestamp-millis field, which fastavro reads as a datetime, as JSON: epoch millis."""
    return int(value.timestamp() * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="txflow.results")
    parser.add_argument("--group", default=f"read-results-{uuid.uuid4()}")
    parser.add_argument("--expect", type=int, default=0, help="stop after this many results")
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--schemas", type=pathlib.Path, default=SCHEMAS)
    parser.add_argument("--schema-registry", metavar="URL",
                        help="a Confluent-compatible schema registry to read writer schemas from")
    args = parser.parse_args()

    if args.schema_registry:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        deserializer = AvroDeserializer(SchemaRegistryClient({"url": args.schema_registry}))
        context = SerializationContext(args.topic, MessageField.VALUE)

        def read_value(value):
            return deserializer(value, context)
    else:
        schemas = schemas_by_id(args.schemas)

        def read_value(value):
            return decode(schemas, value)
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([args.topic])
    read = 0
    last = time.monotonic()
    try:
        while not args.expect or read < args.expect:
            message = consumer.poll(0.5)
            if message is None:
                if time.monotonic() - last > args.idle:
                    break
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise SystemExit(f"reading {args.topic}: {message.error()}")
            result = read_value(message.value())
            print(json.dumps(result, default=epoch_millis), flush=True)
            read += 1
            last = time.monotonic()
    finally:
        consumer.close()
    if args.expect and read < args.expect:
        print(f"read {read} results of {args.expect} expected", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
