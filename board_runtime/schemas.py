"""The versioned schemas of what the runtime reads (the bundle manifest) and writes (results, probes)."""

BUNDLE_SCHEMA = "embedded-pipeline/bundle/2"  # 2: every artifact names its format, precision and session
RESULT_SCHEMA = "embedded-pipeline/bench-result/2"
SUITE_SCHEMA = "embedded-pipeline/bench-suite/1"
PROBE_SCHEMA = "embedded-pipeline/probe/1"
LOGITS_SCHEMA = "embedded-pipeline/logits/2"  # 2: a detector's artifacts give their detections, not logits
TIMINGS_SCHEMA = "embedded-pipeline/model-timings/1"
