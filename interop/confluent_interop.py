"""Interoperability check run by the Rust integration tests.

An independent Confluent client (confluent-kafka's SchemaRegistryClient and AvroDeserializer)
talks to our schema registry and decodes the events our command service wrote. Prints one JSON
document on stdout; exits non-zero, with the reason on stderr, if anything disagrees.
"""

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def fail(message):
    print(f"interop check failed: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def registry_round_trip(client):
    """Registers, looks up, evolves and reads back a schema through Confluent's client."""
    subject = f"interop-{uuid.uuid4().hex}-value"
    v1 = {
        "type": "record",
        "name": "Customer",
        "namespace": "interop",
        "fields": [{"name": "id", "type": "string"}],
    }
    v2 = dict(v1, fields=v1["fields"] + [{"name": "tier", "type": "string", "default": "basic"}])
    breaking = dict(v1, fields=v1["fields"] + [{"name": "age", "type": "int"}])

    id1 = client.register_schema(subject, Schema(json.dumps(v1), "AVRO"))
    again = client.register_schema(subject, Schema(json.dumps(v1, indent=2), "AVRO"))
    check(again == id1, f"re-registering the same schema gave id {again}, not {id1}")
    fetched = client.get_schema(id1)
    check(json.loads(fetched.schema_str)["name"] == "Customer", "get_schema returned another schema")
    looked_up = client.lookup_schema(subject, Schema(json.dumps(v1), "AVRO"))
    check(looked_up.schema_id == id1 and looked_up.version == 1, f"lookup gave {looked_up}")

    check(client.test_compatibility(subject, Schema(json.dumps(v2), "AVRO")), "a defaulted new field must be compatible")
    check(not client.test_compatibility(subject, Schema(json.dumps(breaking), "AVRO")), "a required new field must be incompatible")
    id2 = client.register_schema(subject, Schema(json.dumps(v2), "AVRO"))
    check(id2 != id1, "a new schema must get a new id")
    latest = client.get_latest_version(subject)
    check(latest.version == 2 and latest.schema_id == id2, f"latest version is {latest}")
    check(client.get_versions(subject) == [1, 2], "versions must be [1, 2]")
    check(subject in client.get_subjects(), "the subject must be listed")

    client.set_compatibility(subject_name=subject, level="FULL")
    check(client.get_compatibility(subject) == "FULL", "subject compatibility must read back FULL")
    deleted = client.delete_subject(subject)
    check(sorted(deleted) == [1, 2], f"deleting the subject returned {deleted}")
    return {"subject": subject, "ids": [id1, id2]}


def consume(bootstrap, client, topic, count, timeout):
    """Reads `count` committed records from the beginning of `topic` and decodes them."""
    deserialize = AvroDeserializer(client)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"interop-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    events = []
    deadline = time.monotonic() + timeout
    try:
        while len(events) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                raise KafkaException(message.error())
            value = message.value()
            check(value[0] == 0, "records must start with the Confluent magic byte 0")
            schema_id = int.from_bytes(value[1:5], "big")
            decoded = deserialize(value, SerializationContext(topic, MessageField.VALUE))
            events.append(
                {
                    "key": message.key().decode(),
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "schema_id": schema_id,
                    "value": decoded,
                }
            )
    finally:
        consumer.close()
    check(len(events) >= count, f"read {len(events)} of {count} records from {topic}")
    return events


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    client = SchemaRegistryClient({"url": args.registry, "timeout": 10})
    registry = registry_round_trip(client)
    events = consume(args.bootstrap, client, args.topic, args.count, args.timeout)
    json.dump({"registry": registry, "events": events}, sys.stdout, default=str)


if __name__ == "__main__":
    main()
