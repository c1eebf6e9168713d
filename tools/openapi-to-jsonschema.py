#!/usr/bin/env python3
"""Derive the JSON Schemas of the `GET /user/vehicles`, `GET /user/vehicles/{id}/status`, `/trips`,
`/alerts`, `/maintenance`, `/alarms`, `/lastPosition`, `/telemetry` and `/collisions` bodies
from the official Stellantis OpenAPI file (api-b2c.yaml, info.version 4.17.2) and write them to
tests/data/. The tests validate the simulator's bodies against these files, so they run on a fresh
clone without the OpenAPI file. Run it again when the official file changes:

    python3 tools/openapi-to-jsonschema.py ../shared/reference/api-b2c.yaml tests/data

The conversion keeps field names, types, required lists and enums; it maps `$ref`s to `$defs`,
drops OpenAPI-only keywords (`example`, `discriminator`, `xml`, `externalDocs`) and turns
`nullable: true` into a type union. The official file contains tab characters, which YAML forbids,
so they are replaced by spaces before parsing. YAML 1.1 booleans other than true/false
(`No`, `Yes`) are kept as strings. One `$ref` in the file lacks its leading slash
(`#components/schemas/StolenCallCenter`); it is repaired.
"""
import json
import sys

import yaml

DROP = {"example", "examples", "discriminator", "xml", "externalDocs", "deprecated", "readOnly", "writeOnly"}


def convert(node):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in DROP:
                continue
            if k == "$ref":
                name = v.split("/")[-1]
                out["$ref"] = "#/$defs/" + name
                continue
            if k == "nullable":
                continue
            out[k] = convert(v)
        if node.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [convert(x) for x in node]
    return node


def reachable(schemas, root):
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in schemas:
            continue
        seen.add(name)
        stack = [schemas[name]]
        while stack:
            n = stack.pop()
            if isinstance(n, dict):
                for k, v in n.items():
                    if k == "$ref" and isinstance(v, str):
                        todo.append(v.split("/")[-1])
                    else:
                        stack.append(v)
            elif isinstance(n, list):
                stack.extend(n)
    return seen


class Loader(yaml.SafeLoader):
    """YAML 1.1 reads `No`, `Yes`, `On`, `Off` as booleans; the OpenAPI file means the strings
    (e.g. chargingMode enum [No, Slow, Quick]). Only true/false are booleans here."""


Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", __import__("re").compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def main():
    src, outdir = sys.argv[1], sys.argv[2]
    text = open(src, encoding="utf-8").read().replace("\t", "    ")
    doc = yaml.load(text, Loader=Loader)
    version = doc["info"]["version"]
    schemas = doc["components"]["schemas"]
    for root, fname in (
        ("Vehicles", "vehicles.schema.json"),
        ("Status", "status.schema.json"),
        ("Trips", "trips.schema.json"),
        ("Alerts", "alerts.schema.json"),
        ("Maintenance", "maintenance.schema.json"),
        ("Alarms", "alarms.schema.json"),
        ("Position", "position.schema.json"),
        ("Telemetries", "telemetries.schema.json"),
        ("Collisions", "collisions.schema.json"),
    ):
        defs = {n: convert(schemas[n]) for n in sorted(reachable(schemas, root))}
        out = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": f"Derived from the official Stellantis OpenAPI file api-b2c.yaml, info.version {version} "
                        f"(Stellantis/stellantis.github.io assets/openapi/api-b2c.yaml), component `{root}`, "
                        "by tools/openapi-to-jsonschema.py. Do not edit by hand.",
            "$ref": f"#/$defs/{root}",
            "$defs": defs,
        }
        with open(f"{outdir}/{fname}", "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, sort_keys=False)
            f.write("\n")
        print(fname, len(defs), "definitions")


if __name__ == "__main__":
    main()
