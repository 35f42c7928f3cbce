"""Request parsing: OpenAI's bounds, then the engine's own sampling rules, each a 400 naming the field."""

from __future__ import annotations

import pytest

from fitchat.serve.api import ApiError, sampling


@pytest.mark.parametrize("body,param", [
    ({"temperature": 3}, "temperature"),          # past OpenAI's bound
    ({"top_p": 0}, "top_p"),                      # inside OpenAI's bound, refused by the engine's rule
    ({"frequency_penalty": "x"}, "frequency_penalty"),
    ({"presence_penalty": float("nan")}, "presence_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
])
def test_bad_sampling_is_a_400_naming_the_field(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as caught:
        sampling(body)
    assert caught.value.status == 400 and caught.value.param == param


def test_good_sampling_keeps_the_chat_defaults_for_what_is_left_out() -> None:
    s = sampling({"temperature": 0.2, "frequency_penalty": 0.5})
    assert (s.temperature, s.frequency_penalty, s.top_k, s.repeat_penalty) == (0.2, 0.5, 40, 1.1)
