#!/usr/bin/env python3
"""bench/run's helper: pgbench output -> JSON, order counts, per-thread CPU of the duka
process, the results table, the targets and the results file."""
import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time
import urllib.parse

# Issue 11's figures (bench/README.md "Targets").
PG_VS_LIMIT1 = 2.0
SQLITE_VS_LIMIT64 = 0.6
P99_MS = 20
SMS_UNTHROTTLED_VS_DISABLED = 0.8
READS_VS_BASELINE = 1.5
PEAK_RSS_MIB = 43
# A process holding this many WebSockets is judged per socket, not by the peak RSS target.
MANY_SOCKETS = 10000
# Issue 17's figures (the live fan-out).
FAN_POST_P99_MS = 50
FAN_FRAME_P99_MS = 100
FAN_FRAME_P99_RATE = 20
FAN_VS_LIMIT = 0.5
FAN_IDLE_BYTES_PER_SOCKET = 24 * 1024
FAN_LOADED_VS_IDLE_RSS = 2.0


def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, int(q * len(sorted_vals)))
    return sorted_vals[i]


def pgbench(out_path, c, per_tx, logs):
    """pgbench's summary and per-transaction logs -> one JSON line; rps counts orders."""
    text = open(out_path).read()
    tps = failed = None
    ok = 0
    for line in text.splitlines():
        if line.startswith("tps = "):
            tps = float(line.split()[2])
        if line.startswith("number of failed transactions:"):
            failed = int(line.split(":")[1].split()[0])
        if line.startswith("number of transactions actually processed:"):
            ok = int(line.split(":")[1].split("/")[0])
    lat = []
    for path in logs:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
    lat.sort()
    ms = lambda us: None if us is None else round(us / 1000, 3)
    print(json.dumps({
        "kind": "pgbench", "concurrency": int(c), "orders_per_tx": per_tx,
        "rps": round(tps * per_tx) if tps else None, "tps": round(tps) if tps else None,
        "ok": ok * per_tx, "transactions": ok, "errors": failed or 0,
        "p50_ms": ms(pct(lat, 0.5)), "p99_ms": ms(pct(lat, 0.99)),
        "p999_ms": ms(pct(lat, 0.999)), "max_ms": ms(lat[-1] if lat else None),
    }))


def count_orders(db_url):
    if db_url.startswith("sqlite:"):
        import sqlite3
        path = urllib.parse.urlsplit(db_url.replace("sqlite://", "sqlite:///", 1)).path
        with sqlite3.connect(path) as con:
            print(con.execute("SELECT COUNT(*) FROM orders").fetchone()[0])
    else:
        out = subprocess.run(["psql", db_url, "-XtAc", "SELECT COUNT(*) FROM orders"],
                             check=True, capture_output=True, text=True).stdout
        print(int(out.strip()))


def copy_sqlite(src, dst):
    """A consistent copy of a SQLite database (the online backup API, WAL included)."""
    import sqlite3
    with sqlite3.connect(src) as s, sqlite3.connect(dst) as d:
        s.backup(d)


def threads(pid):
    """One snapshot of the process's threads: {tid: [comm, utime+stime ticks]}, the
    machine's busy and total ticks, and the monotonic clock."""
    out = {"t": time.monotonic(), "threads": {}}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            comm = open(f"{task}/comm").read().strip()
            stat = open(f"{task}/stat").read()
        except OSError:
            continue  # the thread ended between listing and reading
        # comm may hold spaces and parentheses: the fields start after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        out["threads"][os.path.basename(task)] = [comm, int(fields[11]) + int(fields[12])]
    cpu = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    out["machine_busy"] = sum(cpu) - cpu[3] - cpu[4]
    out["machine_total"] = sum(cpu)
    print(json.dumps(out))


def thread_delta(before_path, pid):
    """CPU used by each of duka's threads since the snapshot in before_path (see delta)."""
    before = json.load(open(before_path))
    import io
    from contextlib import redirect_stdout
    buf = io.StringIO()
    with redirect_stdout(buf):
        threads(pid)
    print(json.dumps(delta(before, json.loads(buf.getvalue()), pid)))


def delta(before, after, pid):
    """CPU used by each thread between two snapshots (threads() here, or the same shape
    from loadgen), as a percent of one core over the wall time between them. A thread
    started during the phase counts from zero; one that ended during it is not seen
    (sqlx's SQLite worker threads live as long as their pooled connection, the arbiters as
    long as duka)."""
    hz = os.sysconf("SC_CLK_TCK")
    wall = after["t"] - before["t"]
    rows = []
    for tid, (comm, ticks) in after["threads"].items():
        used = ticks - before["threads"].get(tid, [comm, 0])[1]
        # The main thread's comm is the binary's name: call it what it is.
        name = "main" if tid == str(pid) else comm
        rows.append({"tid": int(tid), "comm": name, "cpu_pct": round(100 * used / hz / wall, 1)})
    rows.sort(key=lambda r: (-r["cpu_pct"], r["tid"]))
    total = after["machine_total"] - before["machine_total"]
    busy = after["machine_busy"] - before["machine_busy"]
    return {
        "seconds": round(wall, 2), "process_cpu_pct": round(sum(r["cpu_pct"] for r in rows), 1),
        # All cores together: 100% = the whole machine (duka, the database and the client).
        "machine_busy_pct": round(100 * busy / total, 1) if total else None,
        "threads": rows,
    }


def cpu_from_snapshots(x, pid):
    """loadgen's fan-out records carry two thread snapshots per phase: replace them by the
    per-thread CPU between them (kept in the results file as `threads`)."""
    if x.get("threads_before") and x.get("threads_after"):
        x["threads"] = delta(x["threads_before"], x["threads_after"], pid or 0)
    x.pop("threads_before", None)
    x.pop("threads_after", None)


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        v = f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    return f"{v}{unit}"


def ratio(a, b):
    return a / b if a is not None and b else None


def best(r, prefix):
    """The best orders/s of a limit row over the concurrencies measured, and its c."""
    runs = [(x.get("rps") or 0, x["concurrency"]) for k, x in r.items()
            if k.startswith(prefix + "_c") and x.get("rps")]
    return max(runs) if runs else (None, None)


def find_baseline(db, out_file, explicit):
    if explicit:
        return explicit if os.path.exists(explicit) else None
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(f for f in glob.glob(os.path.join(here, "results", f"*-baseline-{db}.json"))
                   if not out_file or os.path.abspath(f) != os.path.abspath(out_file))
    return found[-1] if found else None


LIMITS = {
    "postgres": [
        ("limit1", "limit: 1 order per transaction, no counter row (pgbench -M prepared, bench/pg_limit_1.sql)"),
        ("limit64", "limit: 64 orders per transaction, one multi-row statement (pgbench -M prepared, bench/pg_limit_64.sql)"),
        ("locked", "duka's own design (counter row lock): 1 order per transaction (pgbench -M prepared, bench/pg_order.sql)"),
    ],
    "sqlite": [
        ("limit1", "limit: 1 order per transaction (loadgen sqlite-direct --per-tx 1: rusqlite in-process, WAL, synchronous=FULL)"),
        ("limit64", "limit: 64 orders per transaction, one statement per row (loadgen sqlite-direct --per-tx 64)"),
    ],
}

CPU_PHASES = [
    ("create_nosms_c64", "create c=64, SMS disabled"),
    ("create_c64", "create c=64, SMS log provider, default limits"),
    ("create_smsfast_c64", "create c=64, SMS unthrottled"),
    ("read_by_id", "GET /api/v1/orders/{id}"),
    ("read_list_first", "GET /api/v1/orders (first page)"),
]


def cpu_block(p, what, t):
    p(f"Per-thread CPU of {what} ({t['seconds']} s): process {t['process_cpu_pct']}% of one core, "
      f"machine {t['machine_busy_pct']}% busy (all cores)")
    # One row per thread name (Linux keeps 15 characters of it), busiest first.
    groups = {}
    for x in t["threads"]:
        groups.setdefault(x["comm"], []).append(x["cpu_pct"])
    p(f"   {'thread':<16} {'n':>3} {'sum %':>6}  each (% of one core)")
    idle = [comm for comm, each in groups.items() if sum(each) < 0.05]
    for comm, each in sorted(groups.items(), key=lambda g: -sum(g[1])):
        if comm in idle:
            continue
        each.sort(reverse=True)
        shown = " ".join(f"{v:.1f}" for v in each[:10]) + (" ..." if len(each) > 10 else "")
        p(f"   {comm:<16} {len(each):>3} {sum(each):>6.1f}  {shown}")
    if idle:
        p(f"   idle: {', '.join(sorted(idle))}")


def load_name(x):
    return f"{x['rate']:g}/s" if x.get("load") == "rate" else f"c={x.get('concurrency')}"


def fanout_section(p, r):
    """The live fan-out: its limit, then duka per rate (README phase 7)."""
    fan, lim = r.get("fanout"), r.get("fanout_limit")
    if not fan and not lim:
        return
    mib = lambda kib: fmt(kib / 1024 if kib is not None else None)
    if fan:
        hwm = (r.get(f"hwm_fanout_{fan['subscribers']}") or {}).get("kib")
        p(f"Live fan-out: {fan['subscribers']} subscribers (all event types), {fan['connected']} connected in "
          f"{fmt(fan['connect_seconds'])} s" + (f"; {fan['connect_failed']} did not, e.g. {fan['connect_error_samples'][:2]}"
                                               if fan.get("connect_failed") else ""))
        p(f"  RSS: fresh process {mib(fan['rss_before_kib'])} MiB, with the idle sockets {mib(fan['rss_connected_kib'])} MiB "
          f"= {fmt(fan['bytes_per_connection'])} B per socket; max after a rate {mib(fan.get('rss_max_after_load_kib'))} MiB; "
          f"peak (VmHWM) {mib(hwm)} MiB")
    if lim:
        p(f"  limit (loadgen raw-server: pre-built frames of duka's shape, the same reader): {lim['connected']} of "
          f"{lim['subscribers']} sockets, {fmt(lim['frames_per_s'])} frames/s over {fmt(lim['seconds'])} s, "
          f"{fmt(lim.get('mean_frame_bytes'))} B/frame, missed {lim['missed_events']}, dup {lim['duplicates']}, "
          f"closed {lim['closed_early']}; its RSS {mib(lim['rss_connected_kib'])} MiB connected "
          f"({fmt(lim['bytes_per_connection'])} B per socket), {mib(lim['rss_after_kib'])} MiB writing")
    if fan:
        p("  frame latency = the client read the POST's 201 -> a subscriber read the order.created frame (0 when the")
        p("  frame came first: 'early' is their share); 'snd p99' = from the POST being sent; frames/s = all frames")
        p("  read by all subscribers from the rate's first POST to the end of its drain (bounded), over that time")
        p(f"  {'load':>7} {'orders/s':>8} {'frames/s':>9} {'B/fr':>4} | {'frame p50':>9} {'p99':>7} {'max':>7} "
          f"{'snd p99':>7} {'early':>5} | "
          f"{'POST p50':>8} {'p99':>7} {'err':>4} | {'missed':>6} {'m.ord':>5} {'dup':>3} {'closed':>6} {'1013':>4} "
          f"{'open':>5} {'drain s':>7} | {'RSS MiB':>7} {'CPU %':>5}")
        for x in fan["phases"][1:]:
            fl, pl = x.get("frame_latency", {}), x.get("post_latency", {})
            cpu = (x.get("threads") or {}).get("process_cpu_pct")
            snd = (x.get("frame_latency_from_send") or {}).get("p99_ms")
            early = ratio(x.get("received_before_response"), x.get("order_frames"))
            p(f"  {load_name(x):>7} {fmt(x['orders_per_s']):>8} {fmt(x['frames_per_s']):>9} "
              f"{fmt(x.get('mean_frame_bytes')):>4} | {fmt(fl.get('p50_ms')):>9} {fmt(fl.get('p99_ms')):>7} "
              f"{fmt(fl.get('max_ms')):>7} {fmt(snd):>7} {fmt(round(100 * early) if early is not None else None, '%'):>5} | "
              f"{fmt(pl.get('p50_ms')):>8} {fmt(pl.get('p99_ms')):>7} "
              f"{x['post_errors']:>4} | {x['missed_events']:>6} {x['missed_orders']:>5} {x['duplicates']:>3} "
              f"{x['closed']:>6} {x['closed_1013']:>4} {x['subscribers_open']:>5} "
              f"{fmt(x['drain_seconds']) + ('' if x['drained'] else '!'):>7} | {mib(x['rss_kib']):>7} {fmt(cpu):>5}")
        p("  (drain s with '!': the bounded wait ended before every open subscriber had every order)")
        c0 = fan["phases"][0]
        if c0.get("frames") or c0.get("missed_events") or c0.get("closed"):
            p(f"  while connecting: {c0['frames']} frames, missed {c0['missed_events']}, dup {c0['duplicates']}, "
              f"closed {c0['closed']}")
        if fan.get("close_samples"):
            p(f"  closes, e.g.: {fan['close_samples'][:3]}")
        for x in fan["phases"][1:]:
            if x.get("post_errors"):
                p(f"  POST errors at {load_name(x)}: {x['post_errors']}, e.g. {x['post_error_samples'][:2]}")
        for x in fan["phases"][1:]:
            if x.get("threads"):
                cpu_block(p, f"duka, fan-out at {load_name(x)}", x["threads"])
    if lim and lim.get("threads"):
        cpu_block(p, "the raw server (limit)", lim["threads"])
    p("")


def fanout_targets(r):
    """Issue 17's list (bench/README.md Targets)."""
    fan, lim = r.get("fanout"), r.get("fanout_limit")
    if not fan:
        return []
    t = []
    t.append((f"{MANY_SOCKETS:,} subscribers connected ({fan['connected']} of {fan['subscribers']})",
              fan["connected"] >= MANY_SOCKETS))
    rates = [x for x in fan["phases"][1:] if x.get("load") == "rate"]
    if rates:
        ok = all(x["post_latency"].get("p99_ms") is not None and x["post_latency"]["p99_ms"] < FAN_POST_P99_MS
                 and x["post_errors"] == 0 for x in rates)
        each = ", ".join(f"{load_name(x)} {fmt(x['post_latency'].get('p99_ms'))}" for x in rates)
        t.append((f"POST p99 < {FAN_POST_P99_MS} ms at every rate, no POST failed ({each} ms; the closed loop is "
                  f"not a rate, not judged)", ok))
    at = next((x for x in rates if x.get("rate") == FAN_FRAME_P99_RATE), None)
    if at:
        p99 = at["frame_latency"].get("p99_ms")
        t.append((f"frame p99 < {FAN_FRAME_P99_MS} ms at {FAN_FRAME_P99_RATE} orders/s ({fmt(p99)} ms)",
                  p99 is not None and p99 < FAN_FRAME_P99_MS))
    else:
        t.append((f"frame p99 < {FAN_FRAME_P99_MS} ms at {FAN_FRAME_P99_RATE} orders/s (rate not measured)", False))
    best, where = fan.get("best_frames_per_s"), fan.get("best_phase")
    if lim:
        q = ratio(best, lim.get("frames_per_s"))
        t.append((f"duka >= {FAN_VS_LIMIT}x the raw limit in frames/s (duka's best over the rates, {fmt(best)}/s "
                  f"at {where}, vs {fmt(lim.get('frames_per_s'))}/s: {fmt(q)}x)", q is not None and q >= FAN_VS_LIMIT))
    bpc = fan.get("bytes_per_connection")
    t.append((f"RSS with {fan['connected']} idle sockets <= {FAN_IDLE_BYTES_PER_SOCKET // 1024} KiB per socket "
              f"({fmt(bpc)} B)", bpc is not None and fan["connected"] > 0 and bpc <= FAN_IDLE_BYTES_PER_SOCKET))
    heavy, idle = fan.get("rss_max_after_load_kib"), fan.get("rss_connected_kib")
    # With no frame delivered there was no fan-out to judge memory or misses under.
    delivered = sum(x.get("frames") or 0 for x in fan["phases"][1:])
    none = "" if delivered else "; no frame was delivered: nothing judged"
    t.append((f"RSS under the heaviest fan-out <= {FAN_LOADED_VS_IDLE_RSS:g}x the idle sockets' "
              f"({fmt(heavy / 1024 if heavy else None)} MiB, the max after any rate, vs "
              f"{FAN_LOADED_VS_IDLE_RSS:g} x {fmt(idle / 1024 if idle else None)} MiB{none})",
              bool(delivered) and heavy is not None and idle is not None and heavy <= FAN_LOADED_VS_IDLE_RSS * idle))
    bad = {k: fan[k] + (lim or {}).get(k, 0) for k in ("missed_events", "duplicates")}
    bad["missed_orders"] = fan["missed_orders"]
    t.append((f"no event missed or duplicated, at any rate and in the limit ({', '.join(f'{k} {v}' for k, v in bad.items())}; "
              f"subscribers closed: {fan['closed_early']}, with 1013: {fan['closed_1013']}{none})",
              bool(delivered) and not any(bad.values())))
    return t


def table(db, mode, results_path, out_file, label, note, baseline_arg):
    rows = [json.loads(l) for l in open(results_path) if l.strip()]
    r = {}
    for row in rows:
        r[row["phase"]] = row["result"]
    # The fan-out's per-thread CPU: each phase against duka's pid, the limit its server's.
    if r.get("fanout_limit"):
        cpu_from_snapshots(r["fanout_limit"], r["fanout_limit"].get("pid"))
    for x in (r.get("fanout") or {}).get("phases", []):
        cpu_from_snapshots(x, r["fanout"].get("pid"))
    lines = []
    p = lines.append
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    duka_bin = r.get("binary", {})
    p(f"duka bench: {db}, {mode} run{f' [{label}]' if label else ''}, "
      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, harness git {git}, "
      f"duka {duka_bin.get('version', '?')} ({duka_bin.get('path', '?')}), {os.cpu_count()} CPUs, {platform.machine()}")
    if note:
        p(f"note: {note}")
    p("")

    # A fan-out-only run (bench/run --only fanout) has none of these phases.
    if any(k.startswith(("limit", "create", "read")) for k in r):
        p("The database alone (no duka): the rows of one order each (customer lookup, order, notification, event)")
        p(f"{'':<3} {'c':>3} | {'orders/s':>9} {'tx/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>4}   (latency per transaction)")
        for key, what in LIMITS.get(db, []):
            cs = sorted(x["concurrency"] for k, x in r.items() if k.startswith(key + "_c"))
            if not cs:
                continue
            p(f"{key}: {what}")
            for c in cs:
                x = r[f"{key}_c{c}"]
                tx = x.get("tps") or (x["transactions"] / x["seconds"] if x.get("seconds") else None)
                p(f"{'':<3} {c:>3} | {fmt(x.get('rps')):>9} {fmt(round(tx) if tx else None):>7} "
                  f"{fmt(x.get('p50_ms')):>7} {fmt(x.get('p99_ms')):>7} {fmt(x.get('errors')):>4}")
        p("")

        p("Order creation: POST /api/v1/orders, closed loop; the limit ratios are at the same c")
        p(f"{'c':>3} | {'SMS on req/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7} {'err':>4} | "
          f"{'SMS off req/s':>13} {'p99 ms':>7} {'err':>4} | {'on/limit1':>9} {'on/limit64':>10}")
        cs = sorted(int(k.split("_c")[1]) for k in r if k.startswith("create_c"))
        for c in cs:
            d, n = r.get(f"create_c{c}", {}), r.get(f"create_nosms_c{c}", {})
            l1, l64 = r.get(f"limit1_c{c}", {}), r.get(f"limit64_c{c}", {})
            p(f"{c:>3} | {fmt(d.get('rps')):>12} {fmt(d.get('p50_ms')):>7} {fmt(d.get('p99_ms')):>7} "
              f"{fmt(d.get('p999_ms')):>7} {fmt(d.get('errors')):>4} | "
              f"{fmt(n.get('rps')):>13} {fmt(n.get('p99_ms')):>7} {fmt(n.get('errors')):>4} | "
              f"{fmt(ratio(d.get('rps'), l1.get('rps'))):>9} {fmt(ratio(d.get('rps'), l64.get('rps'))):>10}")
        p("SMS on = sms.enabled with the log provider at its default limits (10/s); SMS off = sms.enabled = false")
        fast, off = r.get("create_smsfast_c64"), r.get("create_nosms_c64")
        if fast:
            p(f"SMS unthrottled (every order also claimed and recorded), c=64: {fmt(fast.get('rps'))} req/s, "
              f"p99 {fmt(fast.get('p99_ms'))} ms, errors {fast.get('errors')}; "
              f"vs SMS off: {fmt(ratio(fast.get('rps'), (off or {}).get('rps')))}x")
        if "first_write" in r:
            p(f"first write after start: {r['first_write']['ms']} ms")
        p("")

        n_orders = r.get("orders_in_table", {}).get("n")
        seed = r.get("seed", {})
        p(f"Reads with {n_orders} orders in the table (seeded through the API at c=64: "
          f"{fmt(seed.get('rps'))} orders/s, {seed.get('errors', 0)} errors)")
        p(f"{'request':<40} {'c':>3} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7} {'err':>4} {'bytes':>7}")
        for k in ("read_list_first", "read_list_q", "read_list_status", "read_by_id"):
            if k in r:
                x = r[k]
                p(f"GET {x['path']:<36} {x['concurrency']:>3} {fmt(x.get('rps')):>8} {fmt(x.get('p50_ms')):>7} "
                  f"{fmt(x.get('p99_ms')):>7} {fmt(x.get('p999_ms')):>7} {fmt(x.get('errors')):>4} "
                  f"{fmt(x.get('mean_body_bytes')):>7}")
        p("")

    for key, what in CPU_PHASES:
        if r.get(f"threads_{key}"):
            cpu_block(p, f"duka, {what}", r[f"threads_{key}"])
    p("")

    fanout_section(p, r)
    p("Memory (duka's VmRSS; peak = VmHWM of each duka process at its end)")
    if "rss_idle" in r:
        p(f"  idle after start:                    {r['rss_idle']['kib'] / 1024:.1f} MiB")
    fan = r.get("fanout")
    if fan:
        p(f"  fan-out process before {fan['subscribers']} sockets:   {fmt((fan['rss_before_kib'] or 0) / 1024)} MiB")
        p(f"  with {fan['connected']} idle WebSockets:          {fmt((fan['rss_connected_kib'] or 0) / 1024)} MiB "
          f"= {fmt(fan['bytes_per_connection'])} bytes per connection")
        p(f"  max after a fan-out rate:            {fmt((fan.get('rss_max_after_load_kib') or 0) / 1024)} MiB")
    peaks = {k[len("hwm_"):]: x["kib"] for k, x in r.items() if k.startswith("hwm_") and x.get("kib")}
    for proc, kib in peaks.items():
        p(f"  peak, process {proc + ':':<28} {kib / 1024:.1f} MiB")
    judged = {k: v for k, v in peaks.items() if not k.startswith(f"fanout_{MANY_SOCKETS}")}
    peak = max(judged.values()) if judged else None
    if peak:
        p(f"  peak over the processes: {peak / 1024:.1f} MiB ({max(judged, key=judged.get)}; "
          f"the {MANY_SOCKETS}-WebSocket process is judged per socket, not here)")
    p("")

    # Issue 11's targets, exactly its list.
    targets = []
    c64, off64, fast = r.get("create_c64"), r.get("create_nosms_c64"), r.get("create_smsfast_c64")
    if db == "postgres" and c64:
        l1, l1c = best(r, "limit1")
        targets.append((f"PostgreSQL create c=64 >= {PG_VS_LIMIT1}x the 1-order-per-transaction pgbench "
                        f"({c64['rps']} vs {PG_VS_LIMIT1} x {l1} /s at c={l1c}: {fmt(ratio(c64['rps'], l1))}x)",
                        l1 is not None and c64["rps"] >= PG_VS_LIMIT1 * l1))
    if db == "sqlite" and c64:
        l64, l64c = best(r, "limit64")
        targets.append((f"SQLite create c=64 >= {SQLITE_VS_LIMIT64}x the 64-per-transaction loop "
                        f"({c64['rps']} vs {SQLITE_VS_LIMIT64} x {l64} /s at c={l64c}: {fmt(ratio(c64['rps'], l64))}x)",
                        l64 is not None and c64["rps"] >= SQLITE_VS_LIMIT64 * l64))
    if c64:
        targets.append((f"p99 creation latency at c=64 < {P99_MS} ms ({c64['p99_ms']} ms)",
                        c64["p99_ms"] is not None and c64["p99_ms"] < P99_MS))
    if fast and off64:
        q = ratio(fast["rps"], off64["rps"])
        targets.append((f"SMS unthrottled >= {SMS_UNTHROTTLED_VS_DISABLED}x SMS disabled at c=64 "
                        f"({fast['rps']} vs {off64['rps']} /s: {fmt(q)}x)",
                        q is not None and q >= SMS_UNTHROTTLED_VS_DISABLED))
    # The smoke (debug build, c=4, 1,000 orders) is no match for a full run's figures.
    compare = label != "baseline" and mode != "smoke"
    baseline_file = find_baseline(db, out_file, baseline_arg) if compare else None
    base = json.load(open(baseline_file))["results"] if baseline_file else {}
    for key, what in (("read_by_id", "GET /api/v1/orders/{id}"), ("read_list_first", "GET /api/v1/orders first page")):
        x = r.get(key)
        if not x:
            continue
        b = base.get(key)
        if not compare:
            why = "this run IS the baseline" if label == "baseline" else "a smoke is not compared"
            targets.append((f"{what} at c={x['concurrency']} >= {READS_VS_BASELINE}x the baseline "
                            f"({why}: {x['rps']} req/s)", None))
        elif not b:
            targets.append((f"{what} at c={x['concurrency']} >= {READS_VS_BASELINE}x the baseline "
                            f"(no baseline file bench/results/*-baseline-{db}.json)", False))
        else:
            q = ratio(x["rps"], b["rps"])
            same_c = "" if b.get("concurrency") == x["concurrency"] else f", baseline at c={b.get('concurrency')}!"
            targets.append((f"{what} at c={x['concurrency']} >= {READS_VS_BASELINE}x the baseline "
                            f"({x['rps']} vs {b['rps']} req/s in {os.path.basename(baseline_file)}: {fmt(q)}x{same_c})",
                            q is not None and q >= READS_VS_BASELINE))
    if peak:
        targets.append((f"peak RSS < {PEAK_RSS_MIB} MiB ({peak / 1024:.1f} MiB, max over the duka processes "
                        f"but the {MANY_SOCKETS}-WebSocket one)", peak < PEAK_RSS_MIB * 1024))
    by_phase = {k: x.get("errors", 0) or 0 for k, x in r.items() if k.startswith(("create", "read", "seed", "setup"))}
    if r.get("fanout"):
        by_phase["fanout"] = r["fanout"]["post_errors"]
    errors = sum(by_phase.values())
    where = ", ".join(f"{k} {n}" for k, n in by_phase.items() if n)
    missed = sum(x["missed_events"] + x.get("missed_orders", 0) + x["duplicates"] + x["closed_early"]
                 + x.get("subscribers_lost", 0) + (x["subscribers"] - x["connected"])
                 for x in (r.get("fanout"), r.get("fanout_limit")) if x)
    zero = (f"zero errors ({errors}{': ' + where if where else ''}) and zero missed events ({missed}, incl. missed orders, "
            f"duplicates, sockets closed or never connected)", errors == 0 and missed == 0)
    targets.append(zero)

    fan_targets = fanout_targets(r)

    mark = lambda ok: "n/a" if ok is None else ("met" if ok else "NOT MET")
    p("Targets (issue 11)" if len(targets) > 1 else "Target (of issue 11's, the one this run measures)")
    for what, ok in targets:
        p(f"  [{mark(ok)}] {what}")
    if fan_targets:
        p("Targets (issue 17, the live fan-out)")
        for what, ok in fan_targets:
            p(f"  [{mark(ok)}] {what}")
    print("\n".join(lines))
    if out_file:
        with open(out_file, "w") as f:
            json.dump({"db": db, "mode": mode, "label": label, "note": note, "git": git,
                       "duka": duka_bin, "cpus": os.cpu_count(),
                       "at": time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                       "baseline_file": baseline_file and os.path.basename(baseline_file),
                       "results": r,
                       "targets": [{"target": w, "met": ok} for w, ok in targets + fan_targets],
                       "table": lines}, f, indent=1)
        print(f"\nwritten: {out_file}")
    if mode == "smoke":
        # The smoke fails on broken plumbing (errors, missed events), not on speed.
        if not zero[1]:
            print("bench smoke FAILED: errors or missed events", file=sys.stderr)
            sys.exit(1)
        needed = ["create_c1", "limit1_c1", "limit64_c1", "read_by_id", "read_list_q", "fanout", "fanout_limit",
                  "create_nosms_c1", "threads_read_by_id", "hwm_create_reads"]
        gone = [k for k in needed
                if k not in r or not r[k].get("ok", r[k].get("orders_ok", r[k].get("frames", r[k].get("kib", r[k].get("threads")))))]
        # Every fan-out load must have made orders and frames, and their CPU was measured.
        gone += [f"fanout {load_name(x)}" for x in (r.get("fanout") or {}).get("phases", [])[1:]
                 if not (x.get("orders_ok") and x.get("frames") and x.get("threads"))]
        if gone:
            print(f"bench smoke FAILED: nothing measured for {gone}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pgbench")
    a.add_argument("out")
    a.add_argument("c")
    a.add_argument("--per-tx", type=int, default=1)
    a.add_argument("logs", nargs="*")
    sub.add_parser("count-orders").add_argument("db_url")
    a = sub.add_parser("copy-sqlite")
    a.add_argument("src")
    a.add_argument("dst")
    sub.add_parser("threads").add_argument("pid")
    a = sub.add_parser("thread-delta")
    a.add_argument("before")
    a.add_argument("pid")
    a = sub.add_parser("table")
    a.add_argument("db")
    a.add_argument("mode")
    a.add_argument("results")
    a.add_argument("out_file", nargs="?", default="")
    a.add_argument("--label", default="")
    a.add_argument("--note", default="")
    a.add_argument("--baseline", default="", help="results file to compare reads with (default: newest *-baseline-DB.json)")
    x = ap.parse_args()
    if x.cmd == "pgbench":
        pgbench(x.out, x.c, x.per_tx, x.logs)
    elif x.cmd == "count-orders":
        count_orders(x.db_url)
    elif x.cmd == "copy-sqlite":
        copy_sqlite(x.src, x.dst)
    elif x.cmd == "threads":
        threads(x.pid)
    elif x.cmd == "thread-delta":
        thread_delta(x.before, x.pid)
    elif x.cmd == "table":
        table(x.db, x.mode, x.results, x.out_file, x.label, x.note, x.baseline)
