# Decodes an HdrHistogram interval log with PyPI's hdrhistogram (a codec
# independent of ours) and prints, per tag, count, min, max and percentiles as
# JSON. Used by fastkexec/tests/export.rs and by the lab's chained runs
# (xtask/src/labchain.rs).
import json, sys
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
reader = HistogramLogReader(sys.argv[1], HdrHistogram(1, 86400 * 10**9, 3))
out = {}
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    out[h.get_tag()] = {
        "count": h.get_total_count(),
        "min": h.get_min_value(),
        "max": h.get_max_value(),
        "p50": h.get_value_at_percentile(50.0),
        "p90": h.get_value_at_percentile(90.0),
        "p99": h.get_value_at_percentile(99.0),
        "p999": h.get_value_at_percentile(99.9),
        "start_ms": h.get_start_time_stamp(),
    }
print(json.dumps(out))
