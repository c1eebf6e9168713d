#!/usr/bin/env bash
# Serves a stellantis-sync database with Datasette, whatever the file is called: Datasette 0.65
# keys metadata by database name (the file name without its extension), so this writes a copy of
# docs/metadata.json for the file's own name, and adds the settings that keep long cells short.
#   tools/datasette.sh FILE.sqlite [more datasette options, e.g. -p 8001 or --host 0.0.0.0]
# Needs: pip install datasette==0.65.5 datasette-cluster-map==0.18.2 datasette-dashboards==0.8.0
set -euo pipefail
db=${1:?usage: tools/datasette.sh FILE.sqlite [datasette options]}
shift
[ -f "$db" ] || { echo "tools/datasette.sh: no such file: $db" >&2; exit 66; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
meta=$(mktemp --suffix=.json)
trap 'rm -f "$meta"' EXIT
trap 'exit 143' TERM INT
python3 - "$root/docs/metadata.json" "$db" > "$meta" <<'PY'
import json, pathlib, sys
meta = json.load(open(sys.argv[1], encoding="utf-8"))
name = pathlib.Path(sys.argv[2]).stem  # Datasette's database name for this file
(only,) = meta["databases"].values()
meta["databases"] = {name: only}
for dash in meta.get("plugins", {}).get("datasette-dashboards", {}).values():
    for part in list(dash.get("charts", {}).values()) + list(dash.get("filters", {}).values()):
        if "db" in part:
            part["db"] = name
json.dump(meta, sys.stdout, ensure_ascii=False)
PY
datasette serve "$db" --metadata "$meta" \
    --setting truncate_cells_html 40 \
    --setting default_page_size 50 \
    --setting facet_time_limit_ms 500 \
    "$@"
