#!/usr/bin/env python3
"""The shape of the code, measured (issue 24): module import cycles, long functions, SQL outside
`store`. Reads src/ only (non-test code: a file's `#[cfg(test)] mod tests` block is left out).

    tools/layers.py            report
    tools/layers.py --json     the same as JSON, for a test or a diff between two commits

What it counts
- An import is any `crate::a::b` path (in `use` lines and inline) or `super::` path in non-test
  code. Modules are files: src/a/b.rs and src/a/b/mod.rs are `a::b`. Cycles are the strongly
  connected components of that graph with more than one file.
- A function is a `fn` line and the lines up to its closing brace (braces counted outside
  strings, chars and comments). Over 80 lines is long.
- SQL is a call of execute, execute_batch, prepare, prepare_cached, query_row or query_map outside
  src/store/.
Stdlib only; the figures are approximate where Rust syntax is unusual (macros defining functions).
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
SQL = re.compile(r"\.(execute|execute_batch|prepare|prepare_cached|query_row|query_map)\s*\(")
CRATE_PATH = re.compile(r"\bcrate((?:::[a-z_][a-z0-9_]*)+)")
SUPER_PATH = re.compile(r"\b((?:super::)+)([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)")
USE_GROUP = re.compile(r"\buse\s+crate::([a-z_][a-z0-9_:]*)::\{([^;]*)\}", re.S)
FN = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+([a-zA-Z0-9_]+)")


def module_of(path: Path) -> tuple:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip(text: str) -> str:
    """Blanks comments, strings and char literals (keeping newlines), so braces and paths in
    them are not counted."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not text[i - 1:i].isalnum():
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = '"' + hashes
            j = text.find(end, i + 2 + len(hashes))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'\n])'", text[i:i + 4]) or text.startswith("'\\u{", i):
            j = text.find("'", i + 1) + 1
            out.append(" " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def non_test(code: str) -> str:
    """The code without its `#[cfg(test)]` items (a test module or a test-only function)."""
    lines = code.split("\n")
    keep = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]":
            # Skip the attribute and the item after it, to its closing brace (or `;`).
            depth, started, j = 0, False, i + 1
            while j < len(lines):
                depth += lines[j].count("{") - lines[j].count("}")
                started = started or "{" in lines[j]
                if (started and depth <= 0) or (not started and lines[j].rstrip().endswith(";")):
                    break
                j += 1
            keep.extend([""] * (j - i + 1))
            i = j + 1
            continue
        keep.append(lines[i])
        i += 1
    return "\n".join(keep)


def functions(code: str):
    lines = code.split("\n")
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth, started = 0, False
        for j in range(i, len(lines)):
            depth += lines[j].count("{") - lines[j].count("}")
            started = started or "{" in lines[j]
            if not started and lines[j].rstrip().endswith(";"):
                break  # a declaration without a body
            if started and depth <= 0:
                yield m.group(1), i + 1, j - i + 1
                break


def resolve(target: tuple, modules: set) -> tuple:
    """The longest prefix of a path that is a module (a path names an item inside it)."""
    for k in range(len(target), 0, -1):
        if target[:k] in modules:
            return target[:k]
    return ()


def measure():
    files = sorted(p for p in SRC.rglob("*.rs"))
    modules = {module_of(p): p for p in files}
    names = set(modules)
    edges = {m: set() for m in names}
    long_fns, sql = [], []
    fn_over_50 = 0
    for mod, path in modules.items():
        code = non_test(strip(path.read_text()))
        rel = str(path.relative_to(ROOT))
        is_mod_file = path.name in ("mod.rs", "lib.rs", "main.rs")
        # `super` of a.rs (module a::b) is a; of a/b/mod.rs (a::b) it is a too.
        targets = [tuple(m.group(1).split("::")[1:]) for m in CRATE_PATH.finditer(code)]
        for g in USE_GROUP.finditer(code):
            base = tuple(g.group(1).split("::"))
            for item in re.split(r"[,\s]+", g.group(2)):
                item = item.split("::")[0].strip("{} ")
                if re.fullmatch(r"[a-z_][a-z0-9_]*", item or "X"):
                    targets.append(base + (item,))
        for m in SUPER_PATH.finditer(code):
            ups = m.group(1).count("super::")
            base = mod[: max(len(mod) - ups, 0)]
            targets.append(base + tuple(m.group(2).split("::")))
        for t in targets:
            r = resolve(t, names)
            if r and r != mod and r != ():
                # A module's own children importing it (or it importing them) is inside one concern.
                edges[mod].add(r)
        for name, line, length in functions(code):
            if length > 50:
                fn_over_50 += 1
            if length > 80:
                long_fns.append({"file": rel, "line": line, "fn": name, "lines": length})
        if not rel.startswith("src/store/"):
            for m in SQL.finditer(code):
                sql.append({"file": rel, "line": code[: m.start()].count("\n") + 1, "call": m.group(1)})
    # Parent-child edges (a module and its own submodules) are not layering.
    def related(a, b):
        return a[: len(b)] == b or b[: len(a)] == a
    graph = {m: {t for t in ts if not related(m, t) and t != ()} for m, ts in edges.items()}
    cycles = [sorted("::".join(m) for m in c) for c in tarjan(graph) if len(c) > 1]
    return {
        "files": len(files),
        "cycles": sorted(cycles, key=len, reverse=True),
        "functions_over_80": sorted(long_fns, key=lambda f: -f["lines"]),
        "functions_over_50": fn_over_50,
        "sql_outside_store": sql,
        "edges": {"::".join(m) or "crate": sorted("::".join(t) for t in ts) for m, ts in sorted(graph.items())},
    }


def tarjan(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    r = measure()
    if "--json" in sys.argv:
        json.dump(r, sys.stdout, indent=1)
        print()
        return
    print(f"{r['files']} files under src/")
    print(f"import cycles: {len(r['cycles'])}")
    for c in r["cycles"]:
        print(f"  {len(c)} modules: {', '.join(c)}")
    print(f"functions over 80 lines (non-test): {len(r['functions_over_80'])}; over 50: {r['functions_over_50']}")
    for f in r["functions_over_80"]:
        print(f"  {f['lines']:4} {f['file']}:{f['line']} {f['fn']}")
    by_file = {}
    for s in r["sql_outside_store"]:
        by_file[s["file"]] = by_file.get(s["file"], 0) + 1
    print(f"SQL calls outside src/store: {len(r['sql_outside_store'])}")
    for f, n in sorted(by_file.items(), key=lambda x: -x[1]):
        print(f"  {n:4} {f}")


if __name__ == "__main__":
    main()
