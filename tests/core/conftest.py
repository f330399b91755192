"""Fixtures for the pure core's tests: the wire tests run on both JSON encoders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from roomcast import _frames


@pytest.fixture(scope="module", params=["orjson", "stdlib"])
def json_encoder(request: pytest.FixtureRequest) -> Iterator[str]:
    """Encode server frames with orjson, then (a second run) with the standard library.

    Module-scoped, so that Hypothesis tests may use it: the choice holds for
    every example. The orjson run is skipped, saying so, where orjson is not
    installed (the ``speedups`` extra).
    """
    encoder: str = request.param
    with pytest.MonkeyPatch.context() as patch:
        if encoder == "stdlib":
            patch.setattr(_frames, "_orjson_dumps", None)
        elif _frames._orjson_dumps is None:
            pytest.skip("orjson is not installed (pip install 'roomcast[speedups]')")
        yield encoder
