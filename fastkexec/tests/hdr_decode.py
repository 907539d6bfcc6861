# Decodes an HdrHistogram interval log with PyPI's hdrhistogram (a codec
# independent of ours) and prints, per tag, count, min, max and percentiles as
# JSON. Used by fastkexec/tests/export.rs and by the lab's chained runs
# (xtask/src/labchain.rs).
#
# With a second argument, a JSON list of bucket bounds in ns, each tag also gets
# "buckets": the cumulative count of values whose whole HdrHistogram bucket lies
# at or below each bound (the rule of the Prometheus export's `le` buckets).
import json, sys
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
reader = HistogramLogReader(sys.argv[1], HdrHistogram(1, 86400 * 10**9, 3))
bounds = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
out = {}
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    d = {
        "count": h.get_total_count(),
        "min": h.get_min_value(),
        "max": h.get_max_value(),
        "p50": h.get_value_at_percentile(50.0),
        "p90": h.get_value_at_percentile(90.0),
        "p99": h.get_value_at_percentile(99.0),
        "p999": h.get_value_at_percentile(99.9),
        "start_ms": h.get_start_time_stamp(),
    }
    if bounds is not None:
        recorded = [
            (h.get_highest_equivalent_value(v.value_iterated_to), v.count_at_value_iterated_to)
            for v in h.get_recorded_iterator()
        ]
        d["buckets"] = [sum(c for top, c in recorded if top <= b) for b in bounds]
    out[h.get_tag()] = d
print(json.dumps(out))
