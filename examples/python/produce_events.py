#!/usr/bin/env python3
"""An Avro producer for txflow, written as any producer outside txflow would be.

It writes TransactionEvent records in the Confluent wire format (byte 0, the schema id as a
4-byte big-endian integer, then Avro binary) keyed by account_id, with an idempotent producer
(acks=all) and the Java clients' partitioner (murmur2_random), so that an account's events
land on the partition txflow expects.

    python3 examples/python/produce_events.py --bootstrap 127.0.0.1:9092 \
        --topic txflow.events --count 1000 --accounts 20

With --schema-registry URL, the schema id comes from a Confluent-compatible schema registry
instead of schemas/schema-ids.json: confluent-kafka's AvroSerializer registers the schema
under the subject <topic>-value (as txflow does with schemas.registry_url set). --schema FILE
writes with another version of TransactionEvent (say, a newer one with a field added), which
txflow then reads by looking its id up in the registry.

--events FILE sends the events of a file instead, one JSON object per line with the fields of
TransactionEvent (as `txflow` writes them), in order, each keyed by its account_id; --rate N
paces the sending to N events a second.

--trace starts a W3C trace per event, as an instrumented producer does: its record carries a
`traceparent` header (a sampled root span), which txflow's spans continue (docs/OPERATIONS.md).

Prints one JSON line per event written (event_id, account_id, amount_minor, and traceparent
with --trace) and exits non-zero if any write failed.
"""

import argparse
import io
import json
import os
import pathlib
import random
import struct
import sys
import time
import uuid

import fastavro
from confluent_kafka import Producer

SCHEMAS = pathlib.Path(__file__).resolve().parents[2] / "schemas"


def event_schema(schemas: pathlib.Path):
    """The id and parsed schema of TransactionEvent in schemas/schema-ids.json."""
    ids = json.loads((schemas / "schema-ids.json").read_text())
    for schema_id, file in ids.items():
        schema = json.loads((schemas / file).read_text())
        if schema["name"] == "TransactionEvent":
            return int(schema_id), fastavro.parse_schema(schema)
    raise SystemExit(f"no TransactionEvent schema in {schemas}/schema-ids.json")


def wire(schema_id: int, schema, record: dict) -> bytes:
    """The Confluent wire format of one record."""
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def registry_serializer(url: str, schema_file, topic: str):
    """A function from an event to its wire-format bytes, through the registry at url."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    text = (schema_file or SCHEMAS / "transaction_event.avsc").read_text()
    serializer = AvroSerializer(SchemaRegistryClient({"url": url}), text,
                                conf={"auto.register.schemas": True})
    context = SerializationContext(topic, MessageField.VALUE)
    return lambda event: serializer(event, context)


def generated(rng: random.Random, accounts: int) -> dict:
    """A deposit to one of the accounts."""
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "event_type": "DEPOSIT",
        "account_id": f"py-acct-{rng.randrange(accounts)}",
        "counterparty_account_id": None,
        "amount_minor": rng.randrange(1, 100_000),
        "currency": "EUR",
        "occurred_at": int(time.time() * 1000),
        "source": "python-example",
        "attributes": {"producer": "confluent-kafka"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="txflow.events")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--schemas", type=pathlib.Path, default=SCHEMAS)
    parser.add_argument("--schema-registry", metavar="URL",
                        help="a Confluent-compatible schema registry to take the schema id from")
    parser.add_argument("--schema", type=pathlib.Path, metavar="FILE",
                        help="with --schema-registry: the TransactionEvent schema to write with")
    parser.add_argument("--events", type=pathlib.Path, metavar="FILE",
                        help="send the events of FILE (JSON lines) instead of generated ones")
    parser.add_argument("--rate", type=float, metavar="N",
                        help="events a second at most (default: as fast as Kafka takes them)")
    parser.add_argument("--trace", action="store_true",
                        help="start a W3C trace per event: a traceparent header on its record,"
                             " printed with the event")
    args = parser.parse_args()

    if args.schema_registry:
        encode = registry_serializer(args.schema_registry, args.schema, args.topic)
    else:
        if args.schema:
            raise SystemExit("--schema needs --schema-registry")
        schema_id, schema = event_schema(args.schemas)

        def encode(event):
            return wire(schema_id, schema, event)
    rng = random.Random(args.seed)
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
    })
    failed = []

    def delivered(error, message):
        if error is not None:
            failed.append(str(error))

    if args.events:
        lines = args.events.read_text().splitlines()
        events = (json.loads(line) for line in lines if line.strip())
    else:
        events = (generated(rng, args.accounts) for _ in range(args.count))
    started = time.monotonic()
    for n, event in enumerate(events):
        if args.rate:
            ahead = n / args.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        shown = {k: event[k] for k in ("event_id", "account_id", "amount_minor")}
        headers = []
        if args.trace:
            # A sampled root span of this producer: 16 bytes of trace id, 8 of span id.
            shown["traceparent"] = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"
            headers.append(("traceparent", shown["traceparent"].encode()))
        producer.produce(args.topic, key=event["account_id"].encode(), value=encode(event),
                         headers=headers, on_delivery=delivered)
        producer.poll(0)
        print(json.dumps(shown))
    remaining = producer.flush(30)
    if remaining or failed:
        print(f"{remaining} undelivered, {len(failed)} failed: {failed[:3]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
