#!/usr/bin/env python3
"""Summarizes repeated `morpheus bench --json --against ...` runs.

Usage: summarize.py RUN.json... (runs of one NF at one locality)

Prints a markdown table: per object (in any of the runs) the median over the
runs of its NF cost
(ns/packet, floor removed) and of its speedup (original / object, each run's
ratio taken within that run), with the range of the speedups over the runs.
"""
import json
import statistics
import sys

runs = [json.load(open(p)) for p in sys.argv[1:]]
med = statistics.median


def rng(v):
    return f"{min(v):.2f}-{max(v):.2f}"


first = runs[0]
print(f"{first['nf']}, {first['locality']} locality, {len(runs)} runs")
print()
print(f"floor {med([r['floor_ns'] for r in runs]):.1f} ns/pkt; original {med([r['original_ns'] for r in runs]):.1f} ns/pkt "
      f"(runs: {', '.join('%.0f' % r['original_ns'] for r in runs)}); "
      f"control (original / identical copy) {rng([r['control'] for r in runs])}")
print()
print("| variant | runs | ns/pkt (median) | speedup vs original (median) | range over runs |")
print("|---|---|---|---|---|")
names = sorted({v["name"] for r in runs for v in r["variants"]})
for n in names:
    vs = [v for r in runs for v in r["variants"] if v["name"] == n]
    print(f"| {n} | {len(vs)} | {med([v['ns'] for v in vs]):.1f} | {med([v['speedup'] for v in vs]):.2f}x | {rng([v['speedup'] for v in vs])} |")
