"""Copied next to PEFT's tests by scripts/peft_battery/run.py: rows that cannot hold for a method are skipped, with the
reason (see smoa_rows.SKIPS)."""

import pytest
from smoa_rows import SKIPS


def pytest_collection_modifyitems(config, items):
    for item in items:
        for method, reasons in SKIPS.items():
            if f" {method}-" not in item.name and not item.name.endswith(f" {method}]"):
                continue
            test = item.originalname or item.name
            for fragment, reason in reasons.items():
                if fragment in test:
                    item.add_marker(pytest.mark.skip(reason=reason))
                    break
