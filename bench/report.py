"""The printed table and the target check, both read from the JSON document of a run."""


def fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def signed(value, digits=2):
    return "-" if value is None else f"{value:+.{digits}f}"


def table(title, header, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells):  # first column left-aligned, figures right-aligned
        return "  ".join(str(cell).rjust(width) if index else str(cell).ljust(width)
                         for index, (cell, width) in enumerate(zip(cells, widths, strict=False)))

    return "\n".join([title, line(header), line(["-" * width for width in widths]), *map(line, rows), ""])


def dig(document, *path):
    for key in path:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def targets(document):
    """Each target of the issue beside the figure that answers it (met: None when not measured)."""
    scenarios = document.get("scenarios", {})
    checks = []

    def check(what, target, measured, met, unit=""):
        checks.append({"what": what, "target": target, "measured": measured,
                       "met": None if measured is None else bool(met(measured)), "unit": unit})

    for mode in ("stream", "non_stream"):
        for metric in ("ttfb", "total"):
            for stat, limit in (("p50", 2.0), ("p99", 6.0)):
                value = dig(scenarios, "latency", mode, "gateway_minus_direct", metric, stat)
                check(f"1 added latency {mode} {metric} {stat}", f"<= {limit} ms", value,
                      lambda v, limit=limit: v <= limit, "ms")
    check("2 throughput c=20, gateway / nginx rps", ">= 0.15",
          dig(scenarios, "throughput", "c20", "gateway_vs_nginx"), lambda v: v >= 0.15)
    for label in ("c20", "c100"):
        check(f"2 gateway CPU per request ({label})", "<= 0.8 ms",
              dig(scenarios, "throughput", label, "gateway", "relay_cpu_s_per_1000"), lambda v: v <= 0.8, "ms")
        check(f"2 floor_relay CPU per request ({label}), for reference", "-",
              dig(scenarios, "throughput", label, "floor_relay", "relay_cpu_s_per_1000"), lambda v: True, "ms")
    check("3 relay events per second per core", ">= 50,000",
          dig(scenarios, "long_answer", "gateway", "events_per_cpu_s"), lambda v: v >= 50000)
    open_streams = scenarios.get("open_streams") or {}
    sizes = sorted((key for key in open_streams if key.startswith("n") and key[1:].isdigit()),
                   key=lambda key: int(key[1:]))
    if sizes:
        figures = open_streams[sizes[-1]].get("gateway_2w") or {}
        n = figures.get("streams")
        # All N must be open at the same time (each lasts the slow stream's length) and end well.
        at_once = None if figures.get("ok") is None else (
            figures["peak_open"] if figures["ok"] == n else min(figures["ok"], figures["peak_open"]))
        check(f"4 streams open at once, no error (N={n})", f"{n}", at_once, lambda v: v == n)
        check(f"4 RSS growth per open stream (N={n})", "<= 50 KB", figures.get("rss_growth_kb_per_stream"),
              lambda v: v <= 50, "KB")
        interval = open_streams.get("interval_s", 0.2) * 1000
        check(f"4 delta delay p99, whole run (N={n})", f"<= {interval:.0f} ms", figures.get("delay_p99_ms"),
              lambda v: v <= interval, "ms")
        check(f"4 delta delay p99 once all are open (N={n})", f"<= {interval:.0f} ms",
              figures.get("delay_all_open_p99_ms"), lambda v: v <= interval, "ms")
    for label in ("c20", "c100"):
        check(f"5 pool rps / single-account rps ({label})", ">= 0.85",
              dig(scenarios, "pool", label, "pool_vs_single"), lambda v: v >= 0.85)
    websocket = scenarios.get("websocket") or {}
    sizes = sorted((key for key in websocket if key.startswith("n") and key[1:].isdigit()),
                   key=lambda key: int(key[1:]))
    if sizes:
        figures = websocket[sizes[-1]]
        check(f"6 RSS per idle WebSocket (N={figures.get('connections')})", "<= 50 KB",
              figures.get("idle_kb_per_connection"), lambda v: v <= 50, "KB")
    for metric in ("ttfb", "total"):
        for stat in ("p50", "p99"):
            check(f"6 WebSocket minus POST {metric} {stat}", "<= 0 ms (+0.5 ms noise)",
                  dig(websocket, "latency", "websocket_minus_post", metric, stat), lambda v: v <= 0.5, "ms")
    return checks


def render(document):
    out = []
    m = document["machine"]
    setup = document["setup"]
    out.append(f"responses-proxy bench ({document['mode']} mode), {document['generated_at']}, "
               f"{document.get('elapsed_s', '?')} s")
    out.append(f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), Python {m['python']}, "
               f"Linux {m['kernel']}")
    busy = document.get("busy", {})
    out.append("shared machine: " + "; ".join(
        f"at {when} load average {dig(busy, when, 'load_average')}, CPU pressure (some, avg10/avg60) "
        f"{fmt(dig(busy, when, 'cpu_pressure_some_pct', 'avg10'), 1)}%/"
        f"{fmt(dig(busy, when, 'cpu_pressure_some_pct', 'avg60'), 1)}%"
        for when in ("start", "end")))
    out.append(f"gateway: {setup['gateway']}; {setup['gateway_workers']} workers by default; "
               + ", ".join(f"{k} {v}" for k, v in m["packages"].items()))
    out.append("nginx: " + (f"{setup['nginx']}, proxy_buffering off, HTTP/1.1 keepalive upstream, access log off"
                            if setup["nginx"] else f"skipped ({setup['nginx_missing']})"))
    out.append("")
    scenarios = document["scenarios"]
    if "latency" in scenarios:
        out.append(render_latency(scenarios["latency"]))
    if "throughput" in scenarios:
        out.append(render_throughput(scenarios["throughput"]))
    if "long_answer" in scenarios:
        out.append(render_long(scenarios["long_answer"]))
    if "open_streams" in scenarios:
        out.append(render_open(scenarios["open_streams"]))
    if "pool" in scenarios:
        out.append(render_pool(scenarios["pool"]))
    if "websocket" in scenarios:
        out.append(render_websocket(scenarios["websocket"]))
    out.append(render_ceiling(scenarios))
    rows = [[t["what"], t["target"], fmt(t["measured"]) + (f" {t['unit']}" if t["unit"] and t["measured"] is not None
                                                           else ""),
             {True: "met", False: "NOT MET", None: "-"}[t["met"]]] for t in document.get("targets", [])]
    out.append(table("Targets (issue 15)" + (" - quick mode: not meaningful" if document["mode"] == "quick" else ""),
                     ["target", "wanted", "measured", ""], rows))
    if document.get("events"):
        out.append("Events during the run:")
        out.extend(f"  - {event}" for event in document["events"][:20])
        out.append("")
    for name, log in document.get("gateway_logs", {}).items():
        lines = [line for line in log.splitlines() if line.strip()]
        if lines:
            out.append(f"{name} log (level WARNING, last lines of {len(lines)}):")
            out.extend(f"  {line[:200]}" for line in lines[-5:])
            out.append("")
    return "\n".join(out)


def render_latency(section):
    rows = []
    for mode in ("stream", "non_stream"):
        data = section[mode]
        names = [name for name in ("direct", "nginx", "gateway") if name in data]
        for metric in ("ttfb", "first_delta", "total"):
            if metric not in data["direct"]:
                continue
            for stat in ("p50", "p99"):
                row = [f"{mode.replace('_', '-')} {metric} {stat}"]
                row += [fmt(dig(data, name, metric, stat), 3) for name in ("direct", "nginx", "gateway")]
                row += [signed(dig(data, f"{name}_minus_direct", metric, stat), 3) for name in ("gateway", "nginx")]
                rows.append(row)
        errors = {name: data["errors"].get(name) for name in names if data["errors"].get(name)}
        if errors:
            rows.append([f"{mode} errors", str(errors), "", "", "", ""])
    return table(f"1. Added latency, concurrency 1 (ms; median over {section['reps']} repetitions of "
                 f"{section['requests_per_rep']} requests; non-stream direct = the upstream stream read directly)",
                 ["", "direct", "nginx", "gateway", "gw-direct", "nginx-direct"], rows)


def render_throughput(section):
    rows = []
    for label in ("c20", "c100"):
        data = section.get(label)
        if not data:
            continue
        for name in ("direct", "nginx", "floor_flask", "floor_relay", "gateway"):
            figures = data.get(name)
            if not figures:
                continue
            rows.append([f"c={label[1:]} {name}", fmt(figures["rps"], 0), fmt(figures["total_p50_ms"]),
                         fmt(figures["total_p99_ms"]), fmt(figures["relay_cpu_s_per_1000"], 3),
                         fmt(figures["relay_cpu_share"]), fmt(figures["upstream_cpu_share"]),
                         fmt(figures["loadgen_cpu_share"]), sum(figures["errors"].values())])
        rows.append([f"c={label[1:]} ratios", f"gw/direct {fmt(data['gateway_vs_direct'], 3)}",
                     f"gw/nginx {fmt(data['gateway_vs_nginx'], 3)}", f"nginx/direct {fmt(data['nginx_vs_direct'], 3)}",
                     f"gw/floor_relay {fmt(data.get('gateway_vs_floor_relay'), 3)}", "", "", "", ""])
    return table(f"2. Throughput, short streams ({section['duration_s']} s runs, median of {section['reps']}; "
                 "CPU = relay's processes incl. children, share = cores busy; floor_flask: gunicorn + Flask "
                 "answering fixed bytes, floor_relay: + a bare urllib3 relay of the upstream, see bench/floor.py)",
                 ["", "rps", "p50 ms", "p99 ms", "CPU s/1000 req", "relay cores", "fake cores", "loadgen cores",
                  "errors"], rows)


def render_long(section):
    rows = []
    for name in ("direct", "nginx", "gateway"):
        figures = section.get(name)
        if figures:
            rows.append([name, fmt(figures["events_per_request"], 0), fmt(figures["events_per_s"], 0),
                         fmt(figures["events_per_cpu_s"], 0), fmt(figures["total_ms"], 1),
                         fmt(figures["loadgen_cpu_share"]), sum(figures["errors"].values())])
    return table(f"3. Long answer, {section['deltas']} deltas, one stream at a time (median of {section['reps']} "
                 f"x {section['requests_per_rep']} requests)",
                 ["", "events/request", "events/s", "events/CPU-s of relay", "total ms", "loadgen cores", "errors"],
                 rows)


def render_open(section):
    rows = []
    for key, data in section.items():
        if not (key.startswith("n") and key[1:].isdigit()):
            continue
        for name in ("direct", "nginx", "gateway_2w"):
            figures = data.get(name)
            if not figures:
                continue
            rows.append([f"N={key[1:]} {name}", f"{fmt(figures['ok'])}/{figures['streams']}",
                         fmt(figures["peak_open"]), fmt(figures["all_open_after_s"], 1),
                         fmt(figures["delay_p50_ms"], 1), fmt(figures["delay_p99_ms"], 1),
                         fmt(figures["delay_max_ms"], 1), fmt(figures.get("delay_all_open_p50_ms"), 1),
                         fmt(figures.get("delay_all_open_p99_ms"), 1), fmt(figures.get("rss_before_mb"), 1),
                         fmt(figures.get("rss_at_peak_mb"), 1), fmt(figures.get("rss_growth_kb_per_stream"), 1),
                         fmt(figures.get("relay_cpu_s"), 1), fmt(figures.get("harness_cores")),
                         sum(figures["errors"].values())])
    return table(f"4. Open slow streams (a delta every {section['interval_s'] * 1000:.0f} ms for "
                 f"{section['stream_s']:.0f} s; gateway with {section['workers']} workers; delay = one-way, "
                 "upstream send to client receive)",
                 ["", "ok", "peak open", "all open after s", "delay p50 ms", "p99 ms", "max ms", "all open: p50",
                  "p99", "RSS before MB",
                  "RSS at peak MB", "KB/stream", "relay CPU s", "loadgen+fake cores", "errors"], rows)


def render_pool(section):
    rows = []
    for label in ("c20", "c100"):
        data = section.get(label)
        if not data:
            continue
        for name in ("gateway", "gateway_pool"):
            figures = data[name]
            rows.append([f"c={label[1:]} {name}", fmt(figures["rps"], 0), fmt(figures["total_p50_ms"]),
                         fmt(figures["total_p99_ms"]), fmt(figures["relay_cpu_s_per_1000"], 3),
                         sum(figures["errors"].values())])
        rows.append([f"c={label[1:]} pool/single", fmt(data["pool_vs_single"], 3), "", "", "", ""])
    return table(f"5. Pool cost: {section['accounts']} accounts, prompt_cache_key on every request "
                 f"({section['prompt_cache_keys']} distinct), vs 1 account without (median of {section['reps']})",
                 ["", "rps", "p50 ms", "p99 ms", "CPU s/1000 req", "errors"], rows)


def render_websocket(section):
    latency = section["latency"]
    rows = []
    for metric in ("ttfb", "first_delta", "total"):
        for stat in ("p50", "p99"):
            rows.append([f"{metric} {stat}"] + [fmt(dig(latency, name, metric, stat), 3)
                                                for name in ("direct", "post", "websocket")]
                        + [signed(dig(latency, key, metric, stat), 3)
                           for key in ("post_minus_direct", "websocket_minus_direct", "websocket_minus_post")])
    errors = {name: count for name, count in latency["errors"].items() if count}
    if errors:
        rows.append(["errors", str(errors), "", "", "", "", ""])
    out = [table(f"6. WebSocket: one turn, concurrency 1 (ms; median over {section['reps']} repetitions of "
                 f"{section['requests_per_rep']} requests; POST and WebSocket to the same gateway, "
                 f"{section['workers']} workers)",
                 ["", "direct", "POST", "WebSocket", "POST-direct", "WS-direct", "WS-POST"], rows)]
    rows = []
    for key, figures in section.items():
        if not (key.startswith("n") and key[1:].isdigit()):
            continue
        rows.append([f"N={key[1:]}", f"{fmt(figures.get('open_when_idle'))}/{figures.get('connections')}",
                     fmt(figures.get("rss_before_mb"), 1), fmt(figures.get("rss_idle_mb"), 1),
                     fmt(figures.get("idle_kb_per_connection"), 1), fmt(figures.get("turns_ok")),
                     fmt(figures.get("rss_after_turn_mb"), 1), fmt(figures.get("after_turn_kb_per_connection"), 1),
                     sum((figures.get("errors") or {}).values()) + (1 if figures.get("failed") else 0)])
    out.append(table("6. Idle WebSockets (RSS of the gateway's processes; then one request on each, whose "
                     "history the connection keeps)",
                     ["", "open", "RSS before MB", "RSS idle MB", "KB/conn idle", "turns ok", "RSS after MB",
                      "KB/conn after a turn", "errors"], rows))
    return "\n".join(out)


def render_ceiling(scenarios):
    rows = []
    for label in ("c20", "c100"):
        direct = dig(scenarios, "throughput", label, "direct")
        if direct:
            rows.append([f"short streams c={label[1:]}", f"{fmt(direct['rps'], 0)} rps",
                         fmt(direct["loadgen_cpu_share"]), fmt(direct["upstream_cpu_share"])])
    direct = dig(scenarios, "long_answer", "direct")
    if direct:
        rows.append(["long answer", f"{fmt(direct['events_per_s'], 0)} events/s", fmt(direct["loadgen_cpu_share"]),
                     "-"])
    return table("Harness ceiling (load generator straight to the fake upstream; cores = CPU seconds per second)",
                 ["", "direct", "loadgen cores", "fake cores"], rows) if rows else ""
