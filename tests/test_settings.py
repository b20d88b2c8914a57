"""stack.common.settings: the one reader of the TL_* environment for auth and backend."""

from __future__ import annotations

from decimal import Decimal

import pytest

from stack.common.settings import Settings


def test_defaults_follow_wiring_md() -> None:
    s = Settings.from_env({})
    assert s.rate_ws_limit == 8 and s.rate_ws_window == 10
    assert s.login_attempt_limit == 5 and s.login_attempt_window == 15
    assert s.llm_timeout == 5.0 and isinstance(s.llm_timeout, float)
    assert s.price_prompt == Decimal("0.000002") and s.price_completion == Decimal("0.000004")


def test_values_are_typed_and_urls_lose_their_trailing_slash() -> None:
    s = Settings.from_env(
        {
            "TL_LLM_TIMEOUT": "2.5",
            "TL_PRICE_PROMPT": "0.0000015",
            "TL_RATE_WS_WINDOW": " 6 ",
            "TL_AUTH_URL": "http://127.0.0.1:9001/",
            "TL_LLM_API_KEY": "",
        }
    )
    assert s.llm_timeout == 2.5
    assert s.price_prompt == Decimal("0.0000015")  # exact: never through a float
    assert s.rate_ws_window == 6
    assert s.auth_url == "http://127.0.0.1:9001"
    assert s.llm_api_key == "sk-standin"  # blank means unset


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TL_RATE_WS_LIMIT", "eight", "TL_RATE_WS_LIMIT must be an integer, got 'eight'"),
        ("TL_LLM_TIMEOUT", "5s", "TL_LLM_TIMEOUT must be a number, got '5s'"),
        ("TL_PRICE_COMPLETION", "4e-6 USD", "TL_PRICE_COMPLETION must be a decimal number, got '4e-6 USD'"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        Settings.from_env({name: value})
    assert str(err.value) == message
