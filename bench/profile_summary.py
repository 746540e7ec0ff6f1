#!/usr/bin/python3
"""Self time per operator in a Chrome trace of LibTorch's profiler (DIFFTRAIN_PROFILE, trainer/step_profiler.h).

An operator's self time is its duration less that of the operators it called (nested events on the same
thread), so the self times add up to the profiled time, as in torch.profiler's key_averages() table.
Usage: bench/profile_summary.py trace.json [--steps 3] [--top 30]
"""
import argparse
import collections
import json


def self_times(events):
    """{name: [self microseconds, calls]} over complete ("X") events, nested per thread."""
    totals = collections.defaultdict(lambda: [0.0, 0])
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X":
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [event, time of its children]
        def close(entry):
            event, children = entry
            totals[event["name"]][0] += event["dur"] - children
            totals[event["name"]][1] += 1
            if stack:
                stack[-1][1] += event["dur"]
        for e in thread_events:
            while stack and e["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]:
                close(stack.pop())
            stack.append([e, 0.0])
        while stack:
            close(stack.pop())
    return totals


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--steps", type=int, default=3, help="steps in the trace (DIFFTRAIN_PROFILE_STEPS' COUNT)")
    parser.add_argument("--top", type=int, default=30)
    a = parser.parse_args()
    with open(a.trace) as f:
        events = json.load(f)
    totals = self_times(events)
    whole = sum(t for t, _ in totals.values())
    print(f"{'operator':<60} {'ms/step':>9} {'share':>7} {'calls/step':>10}")
    for name, (t, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:a.top]:
        print(f"{name[:60]:<60} {t / 1000 / a.steps:9.1f} {100 * t / whole:6.1f}% {calls / a.steps:10.0f}")
    print(f"{'all operators (self times add up to this)':<60} {whole / 1000 / a.steps:9.1f}")


if __name__ == "__main__":
    main()
