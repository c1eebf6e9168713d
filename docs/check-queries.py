#!/usr/bin/env python3
"""Runs every query of docs/schema.md against a stellantis-sync database in SQLite and in DuckDB's
SQLite reader, and compares the results row by row. Usage:

    python3 docs/check-queries.py stellantis-sync.sqlite

A ```sql block is the SQLite form; a ```sql duckdb block right after it is DuckDB's form of the
same question (otherwise DuckDB runs the SQLite form). Values compare as numbers when both read as
numbers (DuckDB returns sum() of integers as HUGEINT and the columns of grouped views as text),
else as text; rows compare in order, so every query must order its rows completely. A parameter
:vin is replaced by the VIN with the most changes in both forms. Every canned query of
docs/metadata.json must appear word for word as a SQLite form here.

The Python reader of status bodies in docs/schema.md (the ```python block) is run too: every body
must decode to JSON, and each observation's odometer must be the one its body gives.

Needs the pinned packages (no download at run time):
    pip install duckdb==1.5.5 duckdb-extension-sqlite==1.5.5
Exit status: 0 all identical, 1 a query failed or differs, 2 a module is missing."""
import glob
import json
import math
import os
import re
import shutil
import sqlite3
import sys
import tempfile

PINS = "pip install duckdb==1.5.5 duckdb-extension-sqlite==1.5.5"
try:
    import duckdb
    import duckdb_extension_sqlite
except ImportError as e:
    print(f"check-queries: {e.name} is missing; install the pinned versions: {PINS}", file=sys.stderr)
    sys.exit(2)

HERE = os.path.dirname(os.path.abspath(__file__))


def duck_connect(db, tmp):
    """DuckDB with the sqlite extension loaded from the duckdb-extension-sqlite package: the file
    must be called sqlite_scanner.duckdb_extension for DuckDB to find its entry point."""
    shipped = glob.glob(os.path.join(os.path.dirname(duckdb_extension_sqlite.__file__), "extensions", "*", "*.duckdb_extension"))
    if not shipped:
        print(f"check-queries: duckdb-extension-sqlite ships no extension file; {PINS}", file=sys.stderr)
        sys.exit(2)
    ext = os.path.join(tmp, "sqlite_scanner.duckdb_extension")
    shutil.copyfile(shipped[0], ext)
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute(f"LOAD '{ext}'")
    con.execute(f"ATTACH '{db}' AS s (TYPE sqlite, READ_ONLY); USE s;")
    return con


def norm(v):
    """('n', float) for anything that reads as a number, ('s', text) for other text, None."""
    if v is None:
        return None
    if isinstance(v, bool):
        return ("n", float(v))
    if isinstance(v, (int, float)) or type(v).__name__ == "Decimal":
        return ("n", float(v))
    if isinstance(v, bytes):
        return ("s", v.hex())
    s = str(v)
    try:
        if re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", s):
            return ("n", float(s))
    except ValueError:
        pass
    return ("s", s)


def same(a, b):
    if a is None or b is None:
        return a is None and b is None
    if a[0] != b[0]:
        return False
    if a[0] == "n":
        return math.isclose(a[1], b[1], rel_tol=1e-9, abs_tol=1e-9)
    return a[1] == b[1]


def sections(doc):
    """(title, sqlite query, duckdb query) for every section with a ```sql block."""
    out = []
    for section in re.split(r"\n### ", doc)[1:]:
        title = section.splitlines()[0]
        blocks = re.findall(r"```sql( duckdb)?\n(.+?)\n```", section, re.S)
        if not blocks:
            continue
        s = next(q for tag, q in blocks if not tag)
        d = next((q for tag, q in blocks if tag), s)
        out.append((title, s, d))
    return out


def check_bodies(doc, db):
    """Runs the ```python reader of schema.md over every status body; returns the failures."""
    blocks = re.findall(r"```python\n(.+?)\n```", doc, re.S)
    if len(blocks) != 1:
        print(f"bodies: schema.md has {len(blocks)} python blocks, expected the one reader")
        return 1
    code = blocks[0].replace("file:stellantis-sync.sqlite?mode=ro", f"file:{db}?mode=ro")
    ns = {}
    exec(code, ns)
    lite = ns["db"]
    failed = 0
    read = 0
    for (body_id,) in lite.execute("SELECT body_id FROM status_bodies ORDER BY body_id"):
        try:
            json.loads(ns["body"](body_id))
            read += 1
        except Exception as e:  # any failure of the documented reader is a finding
            print(f"bodies: body {body_id} cannot be read: {e!r}")
            failed += 1
            if failed > 5:
                return failed
    rows = lite.execute(
        """SELECT b.body_id, s.odometer_km FROM vehicle_status s
           JOIN status_bodies b ON b.account_id = s.account_id AND b.body_hash = s.body_hash
           WHERE s.odometer_km IS NOT NULL ORDER BY s.status_id"""
    ).fetchall()
    for body_id, odometer in rows:
        got = json.loads(ns["body"](body_id)).get("odometer", {}).get("mileage")
        if got is None or not math.isclose(float(got), odometer, abs_tol=1e-6):
            print(f"bodies: body {body_id} gives odometer {got}, its observation {odometer}")
            failed += 1
            break
    deepest = lite.execute(
        """WITH RECURSIVE up(id, depth) AS (
               SELECT body_id, 0 FROM status_bodies
               UNION ALL SELECT b.base_id, up.depth + 1 FROM up JOIN status_bodies b ON b.body_id = up.id
               WHERE b.base_id IS NOT NULL)
           SELECT max(depth) FROM up"""
    ).fetchone()[0]
    print(f"bodies: {read} read by the documented Python reader, {len(rows)} odometers match, deepest chain {deepest}")
    return failed


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    db = sys.argv[1]
    doc = open(os.path.join(HERE, "schema.md"), encoding="utf-8").read()
    meta = json.load(open(os.path.join(HERE, "metadata.json"), encoding="utf-8"))
    queries = sections(doc)
    failed = 0
    documented = {s for _, s, _ in queries}
    for db_meta in meta["databases"].values():
        for name, q in db_meta.get("queries", {}).items():
            if q["sql"] not in documented:
                print(f"canned query {name} of metadata.json is not a query of schema.md word for word")
                failed += 1
    lite = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    row = lite.execute("SELECT vin FROM vehicle_changes GROUP BY vin ORDER BY count(*) DESC, vin LIMIT 1").fetchone()
    vin = "'" + (row[0] if row else "").replace("'", "''") + "'"
    print(f"SQLite {sqlite3.sqlite_version}, DuckDB {duckdb.__version__}; :vin = {vin}")
    with tempfile.TemporaryDirectory() as tmp:
        duck = duck_connect(db, tmp)
        for title, s_q, d_q in queries:
            s_q, d_q = s_q.replace(":vin", vin), d_q.replace(":vin", vin)
            label = title.split(".")[0]
            try:
                cur = lite.execute(s_q)
                s_cols = [c[0] for c in cur.description]
                s_rows = cur.fetchall()
            except sqlite3.Error as e:
                print(f"{label}: sqlite3 FAILED: {e}")
                failed += 1
                continue
            try:
                cur = duck.execute(d_q)
                d_cols = [c[0] for c in cur.description]
                d_rows = cur.fetchall()
            except duckdb.Error as e:
                print(f"{label}: duckdb FAILED: {str(e).splitlines()[0]}")
                failed += 1
                continue
            problem = None
            if s_cols != d_cols:
                problem = f"columns differ: sqlite3 {s_cols}, duckdb {d_cols}"
            elif len(s_rows) != len(d_rows):
                problem = f"row counts differ: sqlite3 {len(s_rows)}, duckdb {len(d_rows)}"
            else:
                for i, (a, b) in enumerate(zip(s_rows, d_rows)):
                    if not all(same(norm(x), norm(y)) for x, y in zip(a, b)):
                        problem = f"row {i + 1} differs: sqlite3 {a!r}, duckdb {b!r}"
                        break
            if problem:
                failed += 1
                print(f"{label}: DIFFERENT ({problem}) - {title}")
            else:
                print(f"{label}: same rows={len(s_rows)} - {title}")
    failed += check_bodies(doc, db)
    print(f"{len(queries)} queries, {failed} failed or different")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
