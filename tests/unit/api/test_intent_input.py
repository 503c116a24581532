"""What a client may put in an intent's options: labels, not QLP's own keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qlp.api.schemas import IntentIn


def test_labels_are_kept() -> None:
    assert IntentIn(text="build it", options={"team": "a"}).options == {"team": "a"}


def test_qlp_keys_are_refused() -> None:
    """qlp.llm names the model (and a scripted run's script file) an intent continues with:
    a client setting it could point a resumed run at any file on the server."""
    with pytest.raises(ValidationError, match="QLP's own"):
        IntentIn(text="build it", options={"qlp.llm": {"provider": "scripted", "script": "/x"}})
