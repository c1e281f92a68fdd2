#!/usr/bin/env python3
"""The table of scripts/bench.sh: prints it, and optionally writes it into docs/PERFORMANCE.md
(between the bench markers, so that text around them is kept) and draws docs/performance.svg.

Usage: report.py RESULTS.jsonl MACHINE.json [--markdown FILE] [--svg FILE]
"""

import json
import sys
from html import escape

BEGIN = "<!-- bench:begin (written by scripts/bench.sh; edit outside these markers) -->"
END = "<!-- bench:end -->"
RSS_LIMIT_KIB = 64 * 1024

# Each scenario: its label, what it is compared with ("limit" id, or "scenario:<id>" for another
# scenario of the same run), and its target from issue 5:
#   ("ratio", x)        requests/s at least x times the limit's
#   ("rps_of", id)      requests/s at least those of scenario id
#   ("p99_ms", x)       p99 under x ms
#   ("p50_of", id, x)   p50 at most x times that of scenario id (first_1m against first_1k)
SCENARIOS = [
    ("health", "health (readiness: PostgreSQL + Redis ping)", "pgbench_select", None),
    ("list3", "list, cached, 3 rows", "nginx_list3", ("ratio", 0.60)),
    ("list3_304", "list, cached, If-None-Match (304)", "nginx_list3", ("rps_of", "list3")),
    ("list100", "list, cached, full page (100 rows)", "nginx_list100", ("ratio", 0.60)),
    ("status", "list, status filter (uncached)", "pgbench_select", None),
    ("search", "list, text search, 100k tasks (uncached)", "pgbench_select", ("p99_ms", 20.0)),
    ("search_distinct", "list, text search, texts cased at random (uncached)", "pgbench_select", None),
    ("search_after_writes", "list, text search, after update + create (uncached)", "pgbench_select", None),
    ("get", "get one task", "pgbench_select", ("ratio", 0.50)),
    ("get_304", "get one, If-None-Match (304)", "scenario:list3", ("rps_of", "list3")),
    ("get_304@get", "get one's 304, against get one", "scenario:get", None),
    ("get_304_one", "get one, If-None-Match (304), the same task every time", "scenario:list3", None),
    ("create", "create", "pgbench_insert", ("ratio", 0.50)),
    ("update", "update (PUT)", "pgbench_insert", None),
    ("delete", "delete", "pgbench_insert", None),
    ("mix", "90/10 read/write mix", "scenario:list3", ("ratio", 0.40)),
    ("mix@ceiling", "90/10 mix, against one UPDATE per PUT", "x10:pgbench_update", None),
    ("first_1k", "first page, 1,000 tasks (uncached)", "pgbench_select", None),
    ("first_1m", "first page, 1,000,000 tasks (uncached)", "scenario:first_1k", ("p50_of", "first_1k", 1.5)),
    ("sqlite_list100", "SQLite: list, cached, 100 rows", "nginx_list100", None),
    ("sqlite_get", "SQLite: get one task", "pgbench_select", None),
    ("sqlite_create", "SQLite: create", "pgbench_insert", None),
    ("sqlite_update", "SQLite: update (PUT)", "pgbench_insert", None),
    ("sqlite_mix", "SQLite: 90/10 read/write mix", "scenario:sqlite_list100", None),
]

LIMITS = {
    "nginx_list3": "nginx, static file = cached 3-row list",
    "nginx_list100": "nginx, static file = cached 100-row list",
    "pgbench_select": "pgbench -S -M prepared",
    "pgbench_insert": "pgbench, create's INSERT ... RETURNING",
    "pgbench_update": "pgbench, the mix's UPDATE on its 3 rows",
    "redis_get": "redis-benchmark GET",
}


def fmt_rps(x):
    return f"{x:,.0f}"


def fmt_ms(x):
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def build_rows(results):
    by_id = {r["id"]: r for r in results}
    rows = []
    for sid, label, limit, target in SCENARIOS:
        # "id@view": another comparison for scenario id's results.
        r = by_id.get(sid.split("@", 1)[0])
        if r is None:
            continue
        if limit.startswith("x10:"):
            # Ten times a limit: a 90/10 mix's writes alone at that limit's rate.
            other = by_id.get(limit[4:])
            limit_name = f"10 x {LIMITS[limit[4:]]}"
            limit_rps = other["rps"] * 10 if other else None
        elif limit.startswith("scenario:"):
            other = by_id.get(limit.split(":", 1)[1])
            limit_name = next((l for s, l, _, _ in SCENARIOS if s == limit.split(":", 1)[1]), limit)
            limit_rps = other["rps"] if other else None
        else:
            other = by_id.get(limit)
            limit_name = LIMITS[limit]
            limit_rps = other["rps"] if other else None
        ratio = r["rps"] / limit_rps if limit_rps else None
        ratio_text = f"{ratio:.2f}" if ratio is not None else "-"
        target_text, met = "-", None
        if target:
            kind = target[0]
            if kind == "ratio":
                target_text = f">= {target[1]:.2f}"
                met = None if ratio is None else ratio >= target[1]
            elif kind == "rps_of":
                o = by_id.get(target[1])
                target_text = f">= {target[1]} ({fmt_rps(o['rps'])}/s)" if o else f">= {target[1]}"
                met = None if o is None else r["rps"] >= o["rps"]
            elif kind == "p99_ms":
                target_text = f"p99 < {target[1]:g} ms"
                met = r["p99_ms"] < target[1]
            elif kind == "p50_of":
                o = by_id.get(target[1])
                if o:
                    lat = r["p50_ms"] / o["p50_ms"] if o["p50_ms"] else float("inf")
                    ratio_text = f"{lat:.2f}x p50 ({r['p99_ms'] / max(o['p99_ms'], 1e-9):.2f}x p99)"
                    met = lat <= target[2]
                target_text = f"p50 <= {target[2]:g}x {target[1]}"
        # Every scenario must also have 0 errors and a peak RSS under 64 MiB.
        notes = []
        if r["errors"]:
            notes.append("errors")
        if r.get("rss_kib", 0) >= RSS_LIMIT_KIB:
            notes.append("RSS")
        if met is None:
            met_text = "yes" if not notes else "no (" + ", ".join(notes) + ")"
        else:
            ok = met and not notes
            met_text = "yes" if ok else "no (" + ", ".join((["target"] if not met else []) + notes) + ")"
        rows.append({
            "id": sid, "label": label, "config": r["config"], "rps": r["rps"],
            "p50": r["p50_ms"], "p99": r["p99_ms"], "errors": r["errors"],
            "cpu": r.get("cpu_s"), "rss": r.get("rss_kib"), "limit": limit_name,
            "limit_rps": limit_rps, "ratio": ratio, "ratio_text": ratio_text,
            "target": target_text, "met": met_text,
            "requests": r.get("requests", 0), "joined": r.get("joined", 0),
            "runs_rps": [] if "@" in sid else r.get("runs_rps", []),
        })
    for lid, name in LIMITS.items():
        r = by_id.get(lid)
        if r is None:
            continue
        rows.append({
            "id": lid, "label": f"limit: {name}", "config": "limit", "rps": r["rps"],
            "p50": r["p50_ms"], "p99": r["p99_ms"], "errors": r["errors"], "cpu": None,
            "rss": None, "limit": "-", "limit_rps": None, "ratio": None, "ratio_text": "-",
            "target": "-", "met": "-",
        })
    return rows


HEAD = ["scenario", "requests/s", "p50 ms", "p99 ms", "errors", "CPU s", "peak RSS MiB",
        "limit", "ratio", "target", "met?"]


def cells(row):
    return [
        row["label"], fmt_rps(row["rps"]), fmt_ms(row["p50"]), fmt_ms(row["p99"]),
        str(row["errors"]), "-" if row["cpu"] is None else f"{row['cpu']:.1f}",
        "-" if row["rss"] is None else f"{row['rss'] / 1024:.1f}", row["limit"],
        row["ratio_text"], row["target"], row["met"],
    ]


def markdown_table(rows):
    lines = ["| " + " | ".join(HEAD) + " |",
             "|" + "|".join(["---", "--:", "--:", "--:", "--:", "--:", "--:", "---", "--:", "---", "---"]) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cells(row)) + " |")
    return "\n".join(lines)


def text_table(rows):
    table = [HEAD] + [cells(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEAD))]
    right = {1, 2, 3, 4, 5, 6, 8}
    out = []
    for n, r in enumerate(table):
        out.append("  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                             for i, c in enumerate(r)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def svg(rows, path):
    """Horizontal bars on a log scale: each scenario's requests/s over its limit's."""
    import math
    bars = [r for r in rows if r["config"] != "limit"]
    lo, hi = 10.0, 10.0
    for r in bars:
        hi = max(hi, r["rps"], r["limit_rps"] or 0)
    lo_exp, hi_exp = 1, math.ceil(math.log10(hi))
    left, width, row_h, top = 300, 560, 26, 40
    height = top + row_h * len(bars) + 50
    total_w = left + width + 150

    def x(v):
        v = max(v, 10 ** lo_exp)
        return left + width * (math.log10(v) - lo_exp) / (hi_exp - lo_exp)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{height}" '
           f'viewBox="0 0 {total_w} {height}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14" font-weight="bold">Tasklane: requests/s per scenario '
           f'(dark) against its limit (light), log scale</text>']
    for e in range(lo_exp, hi_exp + 1):
        gx = x(10 ** e)
        out.append(f'<line x1="{gx:.1f}" y1="{top - 5}" x2="{gx:.1f}" y2="{top + row_h * len(bars)}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{gx:.1f}" y="{top + row_h * len(bars) + 15}" text-anchor="middle" '
                   f'fill="#555">{10 ** e:,}</text>')
    for i, r in enumerate(bars):
        y = top + i * row_h
        out.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{escape(r["label"])}</text>')
        if r["limit_rps"]:
            out.append(f'<rect x="{left}" y="{y + 3}" width="{x(r["limit_rps"]) - left:.1f}" height="18" '
                       f'fill="#c9d7ea"><title>{escape(r["limit"])}: {fmt_rps(r["limit_rps"])}/s</title></rect>')
        color = "#2b6cb0" if r["met"] in ("yes", "-") else "#c05621"
        out.append(f'<rect x="{left}" y="{y + 7}" width="{x(r["rps"]) - left:.1f}" height="10" fill="{color}">'
                   f'<title>{fmt_rps(r["rps"])}/s</title></rect>')
        tail = max(x(r["rps"]), x(r["limit_rps"] or 0)) + 6
        ratio = f'  ({r["ratio_text"]})' if r["ratio_text"] != "-" else ""
        out.append(f'<text x="{tail:.1f}" y="{y + 16}" fill="#333">{fmt_rps(r["rps"])}{escape(ratio)}</text>')
    out.append(f'<text x="{left}" y="{height - 10}" fill="#555">orange: a target missed (or errors, '
               'or RSS over 64 MiB); first page at 1M is compared with the first page at 1k</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def machine_md(m):
    return "\n".join([
        "| | |", "|---|---|",
        f"| CPU | {m['nproc']} × {m['cpu']} |",
        f"| memory | {m['memory_gib']} GiB |",
        f"| OS, kernel | {m['os']}, Linux {m['kernel']} |",
        f"| PostgreSQL | {m['postgresql']} |",
        f"| Redis | {m['redis']} |",
        f"| nginx | {m['nginx']} |",
        f"| load generator | {m['wrk']}, {m['wrk_threads']} threads, {m['connections']} connections, "
        f"{m['warmup']} s warm-up then {m['duration']} s per scenario, same machine over loopback |",
        f"| pgbench | {m['pgbench']}, -c {m['connections']} -j {m['wrk_threads']} -M prepared |",
        f"| Rust | {m['rustc']} |",
        f"| load average (1, 5, 15 min) | at start {' '.join(m['load_start'])}; at end {' '.join(m['load_end'])} |",
        f"| extra tasklane settings | {m['tasklane_env'] or '(none: defaults)'} |",
        f"| run time | {m['elapsed_s'] // 60} min {m['elapsed_s'] % 60} s, of which {m['load_s']} s loading data |",
    ])


INTRO = """# Performance

`just bench` (`scripts/bench.sh`) measures Tasklane against this machine's own limits, as issue 5
asks: every figure is a ratio to a limit measured in the same run on the same machine, so it
holds on a noisy box. It builds the release binary, starts it on PostgreSQL + Redis (fresh
databases, a unique key prefix) and on the embedded SQLite store, bulk-loads the data, and drives
each scenario with wrk over loopback (32 connections). It is not a test: its figures are goals it
reports. CI only runs it once through (`scripts/bench-smoke.sh`: one-second runs of the debug
build) to see that every scenario and limit still runs, with 0 errors, and that the report is
written; the figures of that run are not looked at.

The section between the markers below is rewritten by every run.
"""


def joined_md(rows):
    """How many of each uncached scenario's reads joined an identical read waiting to start."""
    shares = [
        f"*{r['label']}* {100 * r['joined'] / r['requests']:.0f}%"
        for r in rows
        if r["config"] != "limit" and r.get("requests") and "uncached" in r["label"]
    ]
    return (
        "- *joined*: on PostgreSQL, a list read that asks for the same page as one still waiting "
        "for a search slot or a connection joins it and gets the answer of its one statement, "
        "which starts after both arrived (`crates/tasklane-postgres/src/joined_lists.rs`; not a "
        "cache: no answer is older than its request). The search's ten texts repeat across 32 "
        "connections, so many of its reads join; *texts cased at random* sends the same ten texts "
        "with each letter's case drawn at random, the same work for the store per search with "
        "(almost) no read to join. Share of the reads that joined another, by /metrics: "
        + ("; ".join(shares) if shares else "none measured")
        + "."
    )


def runs_md(rows):
    """Every run of the scenarios measured more than once, in the order they ran."""
    runs = [
        f"*{r['label']}* " + " / ".join(f"{x:,}" for x in r["runs_rps"])
        for r in rows
        if r.get("runs_rps")
    ]
    if not runs:
        return ""
    return "- *runs*: requests/s of each run, in the order measured: " + "; ".join(runs) + "."


def rounds_md(rows):
    """For each scenario held to another's requests/s ("rps_of") and measured in turn with it,
    the ratio of the two runs of each round: one run's median can read several per cent either
    side of 1.00 where the two cost the same, and the rounds show how often and how far."""
    by_id = {r["id"]: r for r in rows}
    parts = []
    for sid, label, _, target in SCENARIOS:
        if not target or target[0] != "rps_of":
            continue
        r, o = by_id.get(sid), by_id.get(target[1])
        if r is None or o is None:
            continue
        mine, theirs = r.get("runs_rps") or [], o.get("runs_rps") or []
        if len(mine) < 2 or len(mine) != len(theirs) or not all(theirs):
            continue
        ratios = [a / b for a, b in zip(mine, theirs)]
        below = sum(1 for q in ratios if round(q, 2) < 1.0)  # as printed
        parts.append(f"*{label}* " + " / ".join(f"{q:.2f}" for q in ratios)
                     + f" ({below} of {len(ratios)} below 1.00)")
    if not parts:
        return ""
    return ("- *round by round*: each run's requests/s over those of the run it is held to in the "
            "same round: " + "; ".join(parts) + ".")


def write_markdown(path, rows, m):
    section = "\n".join([
        BEGIN,
        f"## Last run: {m['date']}",
        "",
        machine_md(m),
        "",
        markdown_table(rows),
        "",
        "![requests/s per scenario against its limit](performance.svg)",
        "",
        "How to read it:",
        "",
        f"- *cached list*: the default list (`GET /api/tasks`) of a database with the seed's 3 tasks "
        f"({m['bytes_list3']} bytes) and of one with 100,000 (a full page of 100, {m['bytes_list100']} bytes), "
        "served from Redis; nginx serves a file with the same bytes (its limit is the median of three "
        "runs of 10 s: one run of nginx moved by half between runs an hour apart).",
        "- *uncached*: PostgreSQL without `REDIS_URL` does not cache, so these measure the store: "
        "the status filter and the text search over 100,000 tasks (ten search texts in turn, from "
        "common words to one matching nothing), the first page with 1,000 and 1,000,000 tasks. "
        "*text search, 100k tasks* runs on the 100,000 tasks as loaded, before any write scenario. "
        "The status filter and *text search, after update + create* run on the same table after "
        "those scenarios (vacuumed and analyzed first, so that autovacuum does not run during them): "
        "its newest tasks are then the tens of thousands just created, all `todo` and all with the "
        "same text, which none of the search words match, so a search must pass all of them to find "
        "its first match: the worst case for a search in list order, reported without a target.",
        joined_md(rows),
        runs_md(rows),
        rounds_md(rows),
        "- *get one* reads random tasks of 100,000; *304* sends the task's or list's ETag in "
        "`If-None-Match`. Get one's 304 is answered from the task's version in the cache "
        "(docs/ARCHITECTURE.md, \"Revalidations\"), and held to the cached list, as the issue words "
        "its target (\"304 revalidation: at least the cached-list figure\"); it is also shown "
        "against get one. *the same task every time* is that 304 for one task, with the list's "
        "script (one request, one key, as the cached list is): no target; read against get one's "
        "304 over 8,192 tasks, it tells what the spread costs. *update* and *delete* go through "
        "Redis too (each write bumps the generation). "
        "The cached 3-row list, get one, their 304s and the mix are compared with each other, so "
        "each is measured more than once and the run with the median requests/s is shown (its "
        "latency and CPU; the errors of all its runs and the highest peak RSS): the mix three "
        "times; the list, get one, their 304s and the one task's 304 in turn (a round of all five, "
        "five times, each run after a warm-up of its own; the tasks' on a second Tasklane serving "
        "the 100,000 tasks, beside the one serving the 3), so that a machine that slows down or "
        "speeds up during the run weighs on all alike.",
        "- *90/10 mix*: nine cached-list reads for each PUT of one of the listed tasks, so writes keep "
        "invalidating the list the readers read; compared with the cached 3-row list, and with ten "
        "times the rate at which pgbench alone runs the PUT's UPDATE on the same 3 rows, one "
        "statement per update (the bound PostgreSQL would put on the mix if every PUT were its own "
        "UPDATE; Tasklane combines the PUTs of a task that arrive while one of it runs into one "
        "UPDATE, so it can pass it).",
        "- *errors*: responses with status 400 or more plus socket errors. *CPU s*: user + system "
        "time of the tasklane process during the 10 s (out of 20 s on 2 cores). *peak RSS*: its VmHWM, "
        "reset before each scenario.",
        "- *met?* also requires 0 errors and a peak RSS under 64 MiB.",
        END,
    ])
    try:
        text = open(path).read()
    except FileNotFoundError:
        text = INTRO + "\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text:
        before = text.split(BEGIN, 1)[0]
        after = text.split(END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


def main(argv):
    results_path, machine_path = argv[1], argv[2]
    opts = dict(zip(argv[3::2], argv[4::2]))
    results = [json.loads(l) for l in open(results_path) if l.strip()]
    machine = json.load(open(machine_path))
    rows = build_rows(results)
    print(text_table(rows))
    rounds = rounds_md(rows)
    if rounds:
        print("\n" + rounds[2:])
    print(f"\nload average at start {' '.join(machine['load_start'])}, at end {' '.join(machine['load_end'])}")
    if "--markdown" in opts:
        write_markdown(opts["--markdown"], rows, machine)
        print(f"written: {opts['--markdown']}")
    if "--svg" in opts:
        svg(rows, opts["--svg"])
        print(f"written: {opts['--svg']}")


if __name__ == "__main__":
    main(sys.argv)
