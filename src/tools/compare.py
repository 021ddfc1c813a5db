"""Compare training runs: one markdown row per run dir, plus ``compare.csv`` and ``compare.png``.

    python -m src.tools.compare results/ [more folders] [--sort valid_acc] [--out DIR]

A run dir is a folder holding ``metrics.json`` (the given folder itself, or one or two levels below
it). ``config.json`` is read when present. Metric columns come from :data:`MAIN_METRICS`: every
entry that at least one run has becomes a column, and a run without it shows ``-``, so classification,
OCR and detection runs fit in one table. ``metrics.json`` files that cannot be read are skipped with
a warning naming the file.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import os
import sys
from typing import Any, Sequence

import pandas as pd

from src import cli
from src.errors import DataError

log = logging.getLogger(__name__)

# (metrics.json key, column header, higher is better). Order = column order; the first one a run
# has is that run's main metric (each task's own headline figure comes before shared ones).
MAIN_METRICS: list[tuple[str, str, bool]] = [
    ("valid_acc", "valid acc", True),
    ("valid_f1", "valid F1", True),
    ("valid_cer", "valid CER", False),
    ("valid_recall@1", "valid R@1", True),
    ("valid_st_iou", "valid ST-IoU", True),
    ("valid_map50", "valid mAP50", True),
]
# columns shown when no run has any main metric, so the table always says what is missing
DEFAULT_METRICS = ("valid_acc", "valid_f1")
# sort direction for keys outside MAIN_METRICS: these are better when smaller
LOWER_IS_BETTER = ("cer", "wer", "loss", "latency", "size_mb", "num_params", "trainable_params", "train_time")
FPS_SETTING_KEYS = ("fps_batch_size", "fps_image_size", "fps_device", "fps_dtype")
CONFIG_KEYS = ("model", "image_size", "batch_size", "epochs", "seed")


def find_run_dirs(paths: Sequence[str]) -> list[tuple[str, str]]:
    """``(root, run dir)`` for each folder holding ``metrics.json``: a given folder itself, or one or
    two levels below it. Sorted, without duplicates."""
    found: dict[str, tuple[str, str]] = {}
    for root in paths:
        if not os.path.isdir(root):
            raise DataError(f"{root}: folder not found")
        candidates = [root]
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.is_dir() and not entry.name.startswith("."):
                candidates.append(entry.path)
                try:
                    candidates += sorted(e.path for e in os.scandir(entry.path)
                                         if e.is_dir() and not e.name.startswith("."))
                except OSError as exc:  # an unreadable folder costs its runs, not the comparison
                    log.warning("skipped %s: %s", entry.path, exc)
        for folder in candidates:
            if os.path.isfile(os.path.join(folder, "metrics.json")):
                found.setdefault(os.path.realpath(folder), (root, folder))
    return sorted(found.values(), key=lambda rf: rf[1])


def _read_json(path: str) -> tuple[dict | None, str]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON at line {exc.lineno} ({exc.msg})"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(data, dict):
        return None, f"expected a JSON object, got {type(data).__name__}"
    return data, ""


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool)  # numpy scalars included


def _read_run(folder: str) -> dict[str, Any] | None:
    metrics_path = os.path.join(folder, "metrics.json")
    metrics, problem = _read_json(metrics_path)
    if metrics is not None and not any(k.startswith(("valid_", "test_")) and _is_number(v)
                                       for k, v in metrics.items()):
        problem = "no valid_*/test_* metric in it (partial or not written by a finished run)"
    if problem:
        log.warning("skipped %s: %s", metrics_path, problem)
        return None
    row: dict[str, Any] = {}
    for key, value in metrics.items():
        if key == "data_warnings" and isinstance(value, dict):
            row[key] = sum(v for v in value.values() if _is_number(v))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            row[key] = value
        elif isinstance(value, list) and key == "fps_image_size":  # non-square inputs (OCR)
            row[key] = "x".join(str(v) for v in value)
    config_path = os.path.join(folder, "config.json")
    if os.path.isfile(config_path):
        config, problem = _read_json(config_path)
        if config is None:
            log.warning("ignored %s: %s", config_path, problem)
        else:
            args = config.get("args") if isinstance(config.get("args"), dict) else {}
            for key in CONFIG_KEYS:
                if isinstance(args.get(key), (str, int, float, bool)):
                    row[f"config_{key}"] = args[key]
            if not row.get("model_name"):
                row["model_name"] = args.get("model_name") or args.get("model")
    return row


def collect_runs(paths: Sequence[str]) -> pd.DataFrame:
    """One row per readable run: ``run`` (folder name), ``path``, the scalar entries of
    ``metrics.json`` (``data_warnings`` summed to one count) and ``config_*`` entries from
    ``config.json``. Empty frame when nothing was found."""
    rows = []
    for root, folder in find_run_dirs(paths):
        row = _read_run(folder)
        if row is None:
            continue
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        name = os.path.basename(os.path.abspath(folder))
        rows.append({"run": name, "_rel": name if rel == "." else rel, "path": folder,
                     **{k: v for k, v in row.items() if k not in ("run", "_rel", "path")}})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # the folder name is the run's name; runs sharing one get their path below the given folder
    # (or the full path when even that is shared)
    for col in ("_rel", "path"):
        dup = df["run"].duplicated(keep=False)
        df.loc[dup, "run"] = df.loc[dup, col].astype(str).str.replace(os.sep, "/")
    first = [c for c in ("run", "model_name", "task") if c in df.columns]
    df = df[first + [c for c in df.columns if c not in first and c != "_rel"]]
    # nullable dtypes keep integer columns integers (7, not 7.0) when some runs lack them
    return df.convert_dtypes().reset_index(drop=True)


def metric_columns(df: pd.DataFrame) -> list[tuple[str, str, bool]]:
    present = [m for m in MAIN_METRICS if m[0] in df.columns and df[m[0]].notna().any()]
    return present or [m for m in MAIN_METRICS if m[0] in DEFAULT_METRICS]


def main_metric(row: pd.Series) -> tuple[str, float] | None:
    """The run's headline metric: the first :data:`MAIN_METRICS` key it has."""
    for key, _, _ in MAIN_METRICS:
        if key in row.index and pd.notna(row[key]):
            return key, float(row[key])
    return None


def higher_is_better(key: str) -> bool:
    for k, _, higher in MAIN_METRICS:
        if k == key:
            return higher
    return not any(part in key for part in LOWER_IS_BETTER)


def sort_runs(df: pd.DataFrame, key: str | None = None, reverse: bool = False) -> pd.DataFrame:
    """Best first by ``key`` (default: the table's first metric column); runs without it last."""
    if df.empty:
        return df
    if key is None:
        key = metric_columns(df)[0][0]
        if key not in df.columns:
            key = "run"
    if key not in df.columns:
        raise DataError(f"--sort {key}: no run has this value; choose one of {', '.join(df.columns)}")
    ascending = key == "run" or not higher_is_better(key)
    if reverse:
        ascending = not ascending
    try:
        out = df.sort_values(key, ascending=ascending, na_position="last", kind="stable")
    except TypeError:  # mixed value types in one column (e.g. 224 and "32x128")
        out = df.sort_values(key, ascending=ascending, na_position="last", kind="stable",
                             key=lambda col: col.map(lambda v: v if pd.isna(v) else str(v)))
    return out.reset_index(drop=True)


def format_duration(seconds: Any) -> str:
    """3m12s style; '-' when unknown."""
    if not _is_number(seconds) or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _cell(value: Any, fmt: str) -> str:
    if value is None or pd.isna(value):
        return "-"
    if fmt == "int":
        return f"{int(value):,}"
    if fmt == "duration":
        return format_duration(value)
    if fmt and _is_number(value):
        return format(value, fmt)
    return str(value).replace("|", "\\|")  # a '|' in a name would split the markdown cell


def _fps_setting(row: pd.Series) -> str | None:
    if "fps" not in row.index or pd.isna(row["fps"]):
        return None
    get = {k: (row[k] if k in row.index and pd.notna(row[k]) else None) for k in FPS_SETTING_KEYS}
    parts = []
    if get["fps_batch_size"] is not None:
        parts.append(f"batch {int(get['fps_batch_size'])}")
    if get["fps_image_size"] is not None:
        size = get["fps_image_size"]
        parts.append(f"{int(size) if _is_number(size) else size} px")
    parts += [str(get[k]) for k in ("fps_device", "fps_dtype") if get[k] is not None]
    return ", ".join(parts)  # "" when metrics.json recorded none of them


def markdown_table(df: pd.DataFrame) -> str:
    """GitHub markdown table of ``df`` rows in their order; missing values are '-'. The FPS setting
    (batch size, input size, device, dtype) is stated once under the table when every run shares it,
    else in its own column."""
    if df.empty:
        return "(no runs)"
    cols: list[tuple[str, str, str]] = [("run", "run", ""), ("model_name", "model", ""),
                                        ("num_params", "params", "int"), ("size_mb", "size MB", ".2f")]
    cols += [(key, header, ".4f") for key, header, _ in metric_columns(df)]
    cols.append(("fps", "FPS", ".1f"))
    settings = [_fps_setting(row) for _, row in df.iterrows()]
    shared = {s for s in settings if s is not None}
    per_row = len(shared) > 1
    if per_row:
        cols.append(("_fps_setting", "FPS setting", ""))
    cols += [("best_epoch", "best epoch", "int"), ("train_time_s", "time", "duration")]
    body = []
    for (_, row), setting in zip(df.iterrows(), settings):
        cells = []
        for key, _, fmt in cols:
            if key == "_fps_setting":
                cells.append(setting or "-")  # None (no FPS) or "" (setting not recorded)
            else:
                cells.append(_cell(row[key] if key in row.index else None, fmt))
        body.append(cells)
    headers = [h for _, h, _ in cols]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    numeric = [fmt != "" for _, _, fmt in cols]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w)
                                 for c, w, num in zip(cells, widths, numeric)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                          for w, num in zip(widths, numeric)) + "|"
    lines = [line(headers), rule] + [line(r) for r in body]
    if len(shared) == 1:
        setting = shared.pop()
        lines += ["", f"FPS measured at {setting}." if setting else "FPS: setting (batch size, device, dtype) "
                  "not recorded in metrics.json."]
    return "\n".join(lines)


def plot_comparison(df: pd.DataFrame, path: str) -> None:
    """Horizontal bars: each run's main metric (named per bar when tasks differ) and its FPS."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = df["run"].astype(str).tolist()
    mains = [main_metric(row) for _, row in df.iterrows()]
    keys = sorted({m[0] for m in mains if m})
    labels = names if len(keys) <= 1 else [f"{n} ({m[0] if m else '-'})" for n, m in zip(names, mains)]
    metric = [m[1] if m else None for m in mains]
    fps = [float(v) if _is_number(v) and math.isfinite(v) else None
           for v in (df["fps"] if "fps" in df.columns else [None] * len(df))]
    settings = {_fps_setting(row) for _, row in df.iterrows()} - {None}
    if len(settings) == 1:
        fps_title = f"FPS ({next(iter(settings)) or 'setting not recorded'})"
    else:
        fps_title = "FPS (settings differ: see the table)" if settings else "FPS"
    fig, (ax_m, ax_f) = plt.subplots(1, 2, sharey=True, figsize=(11, 1.2 + 0.45 * len(df)))
    y = list(range(len(df)))[::-1]  # first row (best after sorting) on top
    for ax, values, fmt, color, title in (
            (ax_m, metric, "{:.4f}", "tab:blue", keys[0] if len(keys) == 1 else "main metric per run"),
            (ax_f, fps, "{:.1f}", "tab:orange", fps_title)):
        ax.barh(y, [v or 0.0 for v in values], color=color)
        for yi, v in zip(y, values):  # missing values get a '-' instead of a silent zero-length bar
            ax.text(v or 0.0, yi, " " + (fmt.format(v) if v is not None else "-"), va="center", fontsize=8)
        ax.set_title(title)
        ax.margins(x=0.2)
    ax_m.set_yticks(y, labels)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.tools.compare",
                                description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("paths", nargs="+", metavar="DIR", help="results folder(s) or run dir(s)")
    cli.add_flag(p, "--sort", default=None, metavar="KEY",
                 help="metrics.json key to sort by, best first (default: the first metric column); 'run' sorts by name")
    cli.add_flag(p, "--reverse", action="store_true", help="reverse the sort order")
    cli.add_flag(p, "--out", default=None, metavar="DIR", help="where compare.csv/png go (default: the first DIR)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    df = collect_runs(args.paths)
    if df.empty:
        raise DataError(f"no runs found under {', '.join(args.paths)} (a run dir holds a readable "
                        f"metrics.json, one or two levels below the given folder)")
    df = sort_runs(df, args.sort, args.reverse)
    print(markdown_table(df))
    out = args.out or args.paths[0]
    os.makedirs(out, exist_ok=True)
    csv_path, png_path = os.path.join(out, "compare.csv"), os.path.join(out, "compare.png")
    df.to_csv(csv_path, index=False)
    plot_comparison(df, png_path)
    log.info("wrote %s and %s (%d runs)", csv_path, png_path, len(df))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    sys.exit(cli.run_main(main))
