"""etc/grafana-dashboard.json asks only for metrics the gateway exports."""

import json
import os
import re

from tests.helpers import ROOT

METRIC = re.compile(r"\bresponses_proxy_[a-z_]+")
HELP = re.compile(r"^# HELP (\S+)", re.MULTILINE)


def test_every_metric_of_the_dashboard_is_exported(client):
    with open(os.path.join(ROOT, "etc", "grafana-dashboard.json"), encoding="utf-8") as handle:
        dashboard = json.load(handle)
    wanted = {re.sub(r"_bucket$", "", name) for panel in dashboard["panels"] for target in panel.get("targets", ())
              for name in METRIC.findall(target["expr"])}
    exported = set(HELP.findall(client.get("/metrics").get_data(as_text=True)))

    assert len(wanted) >= 10
    assert wanted <= exported, wanted - exported
