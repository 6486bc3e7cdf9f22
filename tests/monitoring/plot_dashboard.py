#!/usr/bin/env python3
"""Draws a Grafana dashboard from a live Prometheus into a PNG, without Grafana.

Every panel of the dashboard JSON is placed where its gridPos puts it (24 columns), titled as in
Grafana, and filled from Prometheus' HTTP API over the last --seconds: timeseries as lines,
stacked areas or bars; stat panels as their last value over a sparkline; bar gauges as bars of
an instant query. Grafana's variables are replaced from --var NAME=VALUE; $__range becomes the
time drawn. Rows are section headings.

    python3 tests/monitoring/plot_dashboard.py --prometheus http://127.0.0.1:9090 \\
        --dashboard manifests/monitoring/grafana-dashboard.json --out docs/img/dashboard.png \\
        --seconds 300 --var job=registry-gate --var controller_job=registry-gate-controller \\
        --var __rate_interval=15s

tests/prometheus.rs runs it against the Prometheus it starts when REGISTRY_GATE_DASHBOARD_PNG is
set (`make dashboard-png`). Needs matplotlib.
"""

import argparse
import datetime
import json
import math
import re
import time
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

# Grafana's dark theme, roughly.
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e9a"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0",
           "#37872d", "#fade2a", "#c4162a", "#1f60c4", "#8f3bb8", "#ffb357", "#96d98d"]
THRESHOLD_COLORS = {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c", "yellow": "#fade2a"}

# Inches per grid unit: 24 columns across, and the height of one row of gridPos.h.
COLUMN = 0.9
ROW = 0.42


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--dashboard", required=True, help="Grafana dashboard JSON")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--seconds", type=int, default=300, help="time drawn, ending now")
    parser.add_argument("--step", type=float, default=2, help="seconds between points")
    parser.add_argument("--var", action="append", default=[], help="NAME=VALUE for $NAME")
    args = parser.parse_args()

    variables = dict(v.split("=", 1) for v in args.var)
    variables["__range"] = f"{args.seconds}s"
    variables.setdefault("__rate_interval", "1m")
    variables.setdefault("__interval", f"{int(args.step)}s")
    end = time.time()
    start = end - args.seconds
    prometheus = Prometheus(args.prometheus)
    dashboard = json.load(open(args.dashboard))

    panels = list(flatten(dashboard["panels"]))
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    header = 1.2
    width, height = 24 * COLUMN, rows * ROW + header
    figure = plt.figure(figsize=(width, height), dpi=80, facecolor=BACKGROUND)
    stamp = datetime.datetime.fromtimestamp(end, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    figure.text(0.01, 1 - 0.45 / height, dashboard.get("title", ""), color=TEXT, fontsize=20, weight="bold",
                va="center")
    picked = ", ".join(f"{k}={v}" for k, v in variables.items() if not k.startswith("__") and k != "datasource")
    figure.text(0.99, 1 - 0.45 / height, f"last {args.seconds // 60} min to {stamp}   {picked}", color=MUTED,
                fontsize=11, ha="right", va="center")

    for panel in panels:
        grid = panel["gridPos"]
        pad = 0.08
        left = (grid["x"] * COLUMN + pad) / width
        bottom = 1 - (header + (grid["y"] + grid["h"]) * ROW - pad) / height
        box = ((grid["w"] * COLUMN - 2 * pad) / width, (grid["h"] * ROW - 2 * pad) / height)
        if panel["type"] == "row":
            figure.text(left, bottom + box[1] / 2, panel.get("title", ""), color=TEXT, fontsize=14,
                        weight="bold", va="center")
            continue
        figure.add_artist(Rectangle((left, bottom), box[0], box[1], transform=figure.transFigure,
                                    facecolor=PANEL, edgecolor=BORDER, linewidth=1, zorder=-1))
        # Room inside the panel for the title above and the tick labels left of and below the plot.
        inset_left = {"stat": 0.05, "bargauge": 1.2}.get(panel["type"], 0.75) / width
        inset_bottom = (0.05 if panel["type"] == "stat" else 0.3) / height
        axes = figure.add_axes([left + inset_left, bottom + inset_bottom, box[0] - inset_left - 0.05 / width,
                                box[1] - inset_bottom - 0.45 / height])
        figure.text(left + 0.004, bottom + box[1] - 0.21 / height, panel.get("title", ""), color=TEXT,
                    fontsize=11, weight="bold", va="center")
        style(axes)
        queries = [(substitute(t["expr"], variables), t) for t in panel.get("targets", []) if t.get("expr")]
        draw = {"timeseries": draw_timeseries, "stat": draw_stat, "bargauge": draw_bargauge}.get(panel["type"])
        if draw is None:
            no_data(axes, f"panel type {panel['type']} is not drawn")
            continue
        draw(axes, panel, queries, prometheus, start, end, args.step)

    figure.savefig(args.out, facecolor=BACKGROUND)
    print(f"wrote {args.out}")


class Prometheus:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def get(self, path, **params):
        with urllib.request.urlopen(f"{self.url}{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
            answer = json.load(r)
        if answer.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {answer.get('error')}")
        return answer["data"]

    def range(self, expr, start, end, step):
        return self.get("/api/v1/query_range", query=expr, start=start, end=end, step=step)["result"]

    def instant(self, expr, at):
        return self.get("/api/v1/query", query=expr, time=at)["result"]


def flatten(panels):
    for panel in panels:
        yield panel
        yield from flatten(panel.get("panels", []))


def substitute(expr, variables):
    def value(match):
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in variables:
            raise SystemExit(f"no value for ${name} in {expr}; pass --var {name}=...")
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def legend(target, metric):
    text = target.get("legendFormat") or ""
    if text in ("", "__auto"):
        return ", ".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") or target["refId"]
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), text).strip()


def points(series):
    """(datetimes, values) of a range series, without NaN."""
    times, values = [], []
    for at, text in series["values"]:
        number = float(text)
        if math.isfinite(number):
            times.append(datetime.datetime.fromtimestamp(at, datetime.timezone.utc))
            values.append(number)
    return times, values


def formatter(unit):
    def seconds(v):
        a = abs(v)
        if a == 0:
            return "0 s"
        if a < 1e-3:
            return f"{v * 1e6:.3g} µs"
        if a < 1:
            return f"{v * 1e3:.3g} ms"
        if a < 120:
            return f"{v:.3g} s"
        if a < 7200:
            return f"{v / 60:.3g} min"
        return f"{v / 3600:.3g} h"

    return {
        "s": seconds,
        "percentunit": lambda v: f"{v * 100:.3g}%",
        "reqps": lambda v: f"{v:.3g} req/s",
        "ops": lambda v: f"{v:.3g}/s",
    }.get(unit, lambda v: f"{v:.4g}")


def style(axes):
    axes.set_facecolor(PANEL)
    for spine in axes.spines.values():
        spine.set_color(BORDER)
    axes.tick_params(colors=MUTED, labelsize=8)
    axes.grid(color=BORDER, linewidth=0.6)
    axes.set_axisbelow(True)


def no_data(axes, text="No data"):
    axes.set_xticks([])
    axes.set_yticks([])
    axes.grid(False)
    axes.text(0.5, 0.5, text, color=MUTED, ha="center", va="center", fontsize=12, transform=axes.transAxes)


def draw_timeseries(axes, panel, queries, prometheus, start, end, step):
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    custom = defaults.get("custom", {})
    unit = defaults.get("unit", "none")
    lines = []
    for expr, target in queries:
        for series in prometheus.range(expr, start, end, step):
            times, values = points(series)
            if times:
                lines.append((legend(target, series["metric"]), times, values))
    if not lines:
        return no_data(axes)
    lines.sort(key=lambda line: -max(line[2]))
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(lines))]
    fill = custom.get("fillOpacity", 0) / 100
    if custom.get("drawStyle") == "bars":
        for (name, times, values), color in zip(lines, colors):
            axes.bar(times, values, width=step / 86400 * 0.9, color=color, label=name, alpha=0.85)
    elif custom.get("stacking", {}).get("mode") == "normal":
        # Stacking needs a common time axis: the union, with gaps as zero.
        axis = sorted({t for _, times, _ in lines for t in times})
        stacks = [[dict(zip(times, values)).get(t, 0) for t in axis] for _, times, values in lines]
        axes.stackplot(axis, stacks, colors=colors, alpha=max(fill, 0.25),
                       labels=[name for name, _, _ in lines], linewidth=0.8)
    else:
        for (name, times, values), color in zip(lines, colors):
            axes.plot(times, values, color=color, linewidth=1.3, label=name)
            if fill:
                axes.fill_between(times, values, color=color, alpha=fill)
    if "min" in defaults:
        axes.set_ylim(bottom=defaults["min"])
    if "max" in defaults:
        axes.set_ylim(top=defaults["max"] * 1.05)
    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: formatter(unit)(v)))
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M" if end - start > 900 else "%H:%M:%S"))
    axes.set_xlim(datetime.datetime.fromtimestamp(start, datetime.timezone.utc),
                  datetime.datetime.fromtimestamp(end, datetime.timezone.utc))
    shown = 6
    handles, labels = axes.get_legend_handles_labels()
    extra = f" (+{len(labels) - shown} more)" if len(labels) > shown else ""
    axes.legend(handles[:shown], labels[:shown], loc="upper left", fontsize=7, ncol=2 if len(labels) > 3 else 1,
                facecolor=PANEL, edgecolor=BORDER, labelcolor=TEXT, framealpha=0.8,
                title=f"top {shown}{extra}" if extra else None, title_fontsize=7)


def threshold_color(defaults, value):
    color = "green"
    for step in defaults.get("thresholds", {}).get("steps", []):
        if step.get("value") is None or value >= step["value"]:
            color = step["color"]
    return THRESHOLD_COLORS.get(color, color)


def draw_stat(axes, panel, queries, prometheus, start, end, step):
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    series = [s for expr, _ in queries for s in prometheus.range(expr, start, end, step)]
    series = [points(s) for s in series]
    series = [s for s in series if s[0]]
    if not series:
        return no_data(axes)
    times, values = series[0]
    last = values[-1]
    color = threshold_color(defaults, last)
    axes.fill_between(times, values, color=color, alpha=0.18, linewidth=0)
    axes.plot(times, values, color=color, alpha=0.6, linewidth=1)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.grid(False)
    low, high = min(values), max(values)
    axes.set_ylim(low - (high - low or 1) * 0.1, high + (high - low or 1) * 1.6)
    axes.text(0.5, 0.62, formatter(defaults.get("unit", "none"))(last), color=color, ha="center",
              va="center", fontsize=26, weight="bold", transform=axes.transAxes)


def draw_bargauge(axes, panel, queries, prometheus, start, end, step):
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    bars = []
    for expr, target in queries:
        for series in prometheus.instant(expr, end):
            value = float(series["value"][1])
            if math.isfinite(value):
                bars.append((legend(target, series["metric"]), value))
    if not bars:
        return no_data(axes)
    bars.sort(key=lambda bar: bar[1])
    top = max(value for _, value in bars) or 1
    cmap = plt.get_cmap("YlOrRd")
    names = [name for name, _ in bars]
    values = [value for _, value in bars]
    axes.barh(names, values, color=[cmap(0.3 + 0.7 * v / top) for v in values])
    decimals = defaults.get("decimals")
    for i, value in enumerate(values):
        text = f"{value:.{decimals}f}" if decimals is not None else f"{value:.3g}"
        axes.text(value, i, f" {text}", color=TEXT, va="center", fontsize=9)
    axes.set_xlim(0, top * 1.15)
    axes.tick_params(axis="y", labelsize=9, colors=TEXT)


if __name__ == "__main__":
    main()
