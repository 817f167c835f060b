"""Reading a scrape of /metrics in tests."""

from prometheus_client.parser import text_string_to_metric_families


def metric(text, name, **labels):
    """The sum of the samples named ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()))


def label_values(text, name, label):
    """Every value ``label`` takes among the samples named ``name``."""
    return {sample.labels[label] for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name}
