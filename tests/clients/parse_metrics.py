"""Parses an OpenMetrics page from stdin with the official Prometheus Python
client's strict parser and prints every sample as JSON:
{"name{label=value,...}": value}. Exits non-zero if the page does not parse."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
        samples[f"{sample.name}{{{labels}}}"] = sample.value
print(json.dumps(samples))
