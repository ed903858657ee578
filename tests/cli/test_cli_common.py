"""attnctl.cli.common: the filter that keeps transformers' torchvision notice out of the command's output."""

from __future__ import annotations

import logging

from attnctl.cli.common import drop_torchvision_notice, quiet_import_notices


def test_only_the_torchvision_notice_is_dropped_and_installing_twice_adds_one_filter(caplog):
    logger = logging.getLogger("transformers.utils.import_utils")
    quiet_import_notices()
    quiet_import_notices()
    assert logger.filters.count(drop_torchvision_notice) == 1
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to ...")
        logger.warning("something else")
    assert [record.getMessage() for record in caplog.records] == ["something else"]
