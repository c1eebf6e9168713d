#!/usr/bin/env python3
"""Runs every query of docs/schema.md against a stellantis-sync database, in the sqlite3 shell and
in DuckDB's SQLite reader, and reports the row counts. Usage:

    python3 docs/check-queries.py stellantis-sync-demo.sqlite

A ```sql block runs in both unless a ```sql duckdb block follows it, which DuckDB runs instead.
DuckDB loads its sqlite extension from the `duckdb-extension-sqlite-scanner` package when it
cannot download it (no network)."""
import glob
import os
import re
import subprocess
import sys

import duckdb

db = sys.argv[1]
doc = open(os.path.join(os.path.dirname(__file__), "schema.md"), encoding="utf-8").read()
failed = 0
for section in re.split(r"\n### ", doc)[1:]:
    title = section.splitlines()[0]
    blocks = re.findall(r"```sql( duckdb)?\n(.+?)\n```", section, re.S)
    if not blocks:
        continue
    sqlite_q = next(q for tag, q in blocks if not tag)
    duck_q = next((q for tag, q in blocks if tag), sqlite_q)
    r = subprocess.run(["sqlite3", "-readonly", db, sqlite_q], capture_output=True, text=True)
    s_ok = r.returncode == 0 and not r.stderr
    con = duckdb.connect()
    try:
        con.execute("LOAD sqlite")
    except Exception:
        ext = glob.glob(os.path.join(os.path.dirname(duckdb.__file__), "..", "duckdb_extension_sqlite_scanner", "extensions", "*", "sqlite_scanner.duckdb_extension"))
        con.execute(f"LOAD '{ext[0]}'")
    con.execute(f"ATTACH '{db}' AS s (TYPE sqlite, READ_ONLY); USE s;")
    try:
        rows = len(con.execute(duck_q).fetchall())
        d_ok = True
    except Exception as e:  # noqa: BLE001
        rows, d_ok = str(e).splitlines()[0], False
    failed += (not s_ok) + (not d_ok)
    print(f"{title[:60]:<60} sqlite3: {'ok' if s_ok else r.stderr.strip()} ({len(r.stdout.splitlines())} rows)  duckdb: {'ok' if d_ok else 'FAIL'} ({rows} rows)")
sys.exit(1 if failed else 0)
