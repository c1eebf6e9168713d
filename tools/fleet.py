#!/usr/bin/env python3
"""Fleet analytics over every shard's database with DuckDB (see docs/fleet.md).

Attaches each shard's SQLite database read-only and creates one view per table and per SQLite
view, the UNION ALL BY NAME of all shards with a leading `shard` column. Then runs a query, or
prints the SQL for the duckdb shell.

    python3 tools/fleet.py /var/lib/stellantis-sync/*/stellantis-sync.sqlite
    python3 tools/fleet.py --query "SELECT shard, count(*) FROM vehicles GROUP BY ALL" DB...
    python3 tools/fleet.py --json --query "SELECT * FROM accounts" DB...
    python3 tools/fleet.py --sql DB... > fleet.sql; duckdb -init fleet.sql

A shard's number is taken from the database's directory name when it is a number (the systemd
template's /var/lib/stellantis-sync/I/, the StatefulSet's pod index), otherwise from its
position on the command line; `I=PATH` sets it explicitly.

Needs (pinned, as CI installs them): duckdb==1.5.5 and duckdb-extension-sqlite==1.5.5, the
latter shipping DuckDB's SQLite extension so nothing is downloaded at run time. Without it, the
extension must already be installed in DuckDB's extension directory (`INSTALL sqlite`, online).
"""

import argparse
import json
import os
import sys
import tempfile


def shard_paths(args):
    """[(shard number, path)] from `PATH` or `I=PATH` arguments."""
    out = []
    for pos, arg in enumerate(args):
        if "=" in arg and arg.split("=", 1)[0].isdigit():
            num, path = arg.split("=", 1)
            out.append((int(num), path))
            continue
        parent = os.path.basename(os.path.dirname(os.path.abspath(arg)))
        out.append((int(parent) if parent.isdigit() else pos, arg))
    nums = [n for n, _ in out]
    if len(set(nums)) != len(nums):
        sys.exit(f"fleet.py: two databases with the same shard number: {out}")
    return out


def sqlite_extension_statement():
    """The statement that loads DuckDB's SQLite extension without a download."""
    try:
        import duckdb
        import duckdb_extension_sqlite
    except ImportError:
        return "LOAD sqlite"
    shipped = os.path.join(
        os.path.dirname(duckdb_extension_sqlite.__file__),
        "extensions",
        "v" + duckdb.__version__,
        "sqlite.duckdb_extension",
    )
    if not os.path.exists(shipped):
        sys.exit(
            f"fleet.py: {shipped} is missing: duckdb-extension-sqlite must have the same version as duckdb ({duckdb.__version__})"
        )
    # DuckDB derives the entry point from the file name, and the extension's own name is
    # sqlite_scanner: load it through a link of that name in a per-user cache directory.
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    link_dir = os.path.join(cache, "stellantis-sync", "duckdb-" + duckdb.__version__)
    os.makedirs(link_dir, exist_ok=True)
    link = os.path.join(link_dir, "sqlite_scanner.duckdb_extension")
    if os.path.realpath(link) != os.path.realpath(shipped):
        tmp = tempfile.mktemp(dir=link_dir)
        os.symlink(shipped, tmp)
        os.replace(tmp, link)
    return "LOAD '" + link.replace("'", "''") + "'"


def quote(ident):
    return '"' + ident.replace('"', '""') + '"'


def build_sql(shards, names):
    """The whole script: settings, extension, ATTACHes, one view per table."""
    lines = [
        "SET autoinstall_known_extensions = false;",
        "SET autoload_known_extensions = false;",
        sqlite_extension_statement() + ";",
    ]
    for num, path in shards:
        lit = path.replace("'", "''")
        lines.append(f"ATTACH '{lit}' AS shard_{num} (TYPE sqlite, READ_ONLY);")
    for name in names:
        parts = [
            f"SELECT {num} AS shard, * FROM shard_{num}.{quote(name)}"
            for num, _ in shards
            if num in names[name]
        ]
        if not parts:
            continue
        lines.append(
            f"CREATE OR REPLACE VIEW {quote(name)} AS\n    "
            + "\n    UNION ALL BY NAME ".join(parts)
            + ";"
        )
    return "\n".join(lines) + "\n"


def table_names(shards):
    """{table or view name: set of shard numbers that have it}, from each file's schema."""
    import sqlite3

    names = {}
    for num, path in shards:
        uri = "file:" + os.path.abspath(path) + "?mode=ro"
        con = sqlite3.connect(uri, uri=True)
        try:
            rows = con.execute(
                "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall()
        finally:
            con.close()
        for (name,) in rows:
            names.setdefault(name, set()).add(num)
    return names


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("databases", nargs="+", help="shard databases: PATH or I=PATH")
    p.add_argument("--query", help="SQL to run over the views (default: a per-shard summary)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON arrays, one per line")
    p.add_argument("--sql", action="store_true", help="print the SQL script instead of running it")
    args = p.parse_args()

    shards = shard_paths(args.databases)
    for _, path in shards:
        if not os.path.exists(path):
            sys.exit(f"fleet.py: {path}: no such database")
    script = build_sql(shards, table_names(shards))
    if args.sql:
        sys.stdout.write(script)
        return
    import duckdb

    con = duckdb.connect()
    con.execute(script)
    query = args.query or (
        "SELECT shard, count(*) AS accounts,"
        " (SELECT count(*) FROM vehicles v WHERE v.shard = a.shard AND v.removed_at IS NULL) AS vehicles"
        " FROM accounts a GROUP BY shard ORDER BY shard"
    )
    cur = con.execute(query)
    cols = [d[0] for d in cur.description]
    rows = cur.fetchall()
    if args.json:
        for row in rows:
            print(json.dumps(list(row), default=str))
        return
    print("\t".join(cols))
    for row in rows:
        print("\t".join("" if v is None else str(v) for v in row))


if __name__ == "__main__":
    main()
