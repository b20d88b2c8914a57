"""Redaction, steps and the journey marker: the pieces the report is built from."""

from __future__ import annotations

import pytest

from harness.capabilities import NotApplicable, not_applicable_reason
from harness.journey import JourneyMarkerError, journey, validate_journey
from harness.redact import REDACTED, redact, redact_value
from harness.steps import count_steps, start_step_log, step

pytest_plugins = ["pytester"]

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLXNlY3JldC14eXo"


@pytest.mark.parametrize(
    "text",
    [
        f"token {JWT} in a log line",
        '{"access_token": "opaque-123", "type": "auth"}',
        "{'refresh_token': 'opaque-456'}",
        "POST /login password=hunter2&email=a@b.c",
        "Authorization: Bearer opaque-789-abcdef",
        "Sec-WebSocket-Protocol: jwt.opaque-000.abc",
        "/oauth/complete#access_token=opaque-111&refresh_token=opaque-222",
    ],
)
def test_should_redact_tokens_and_passwords(text: str) -> None:
    cleaned = redact(text)
    assert REDACTED in cleaned
    for secret in (JWT, "opaque-", "hunter2"):
        assert secret not in cleaned
    assert redact(cleaned) == cleaned


def test_should_redact_parsed_frames_but_keep_their_shape() -> None:
    frame = {"type": "auth", "payload": {"password": "hunter2", "note": f"sig {JWT}", "n": 3}}
    assert redact_value(frame) == {
        "type": "auth",
        "payload": {"password": REDACTED, "note": f"sig {REDACTED}", "n": 3},
    }


def test_should_note_the_failing_step_path_and_time() -> None:
    log = start_step_log(expected_total=2)
    with step("Sign up"):
        pass
    with pytest.raises(AssertionError) as failure:
        with step("Log in"):
            with step("Submit the form"):
                raise AssertionError(f"dashboard never loaded for {JWT}")
    notes = failure.value.__notes__
    assert len(notes) == 1  # only the innermost step names itself
    assert notes[0].startswith("step 2/2 'Log in' › 'Submit the form' (sub-step 2.1) failed after ")
    assert JWT not in notes[0] and REDACTED in notes[0]
    assert [(r.number, r.status) for r in log.records] == [
        ("1", "passed"),
        ("2", "failed"),
        ("2.1", "failed"),
    ]
    assert log.failed_step() is log.records[2]


async def test_should_time_async_steps() -> None:
    log = start_step_log()
    async with step("Wait for nothing") as record:
        assert record.status == "running"
    assert log.records[0].status == "passed" and log.records[0].duration is not None


def test_should_record_a_step_the_target_cannot_do_without_running_it() -> None:
    log = start_step_log(expected_total=3)
    with step("Sign in"):
        pass
    record = step.not_applicable("Refresh rotates the tokens", "lacks refresh_token")
    with pytest.raises(NotApplicable):
        with step("Open the billing page"):
            with step("Read the invoice"):
                raise NotApplicable("gatecheck", "billing")
    assert record.status == "not applicable" and record.reason == "lacks refresh_token"
    assert [(r.number, r.status) for r in log.records] == [
        ("1", "passed"),
        ("2", "not applicable"),
        ("3", "not applicable"),
        ("3.1", "not applicable"),
    ]
    assert log.failed_step() is None, "a step the target cannot do is not a failure"
    assert (
        "2 n/a    0.00 s  Refresh rotates the tokens  -> not applicable: lacks refresh_token" in log.format()
    )
    assert log.records[3].note == "not applicable to gatecheck: lacks billing"


def test_should_word_not_applicable_reasons_one_way() -> None:
    assert (
        not_applicable_reason("external", ["oauth", "billing"])
        == "not applicable to external: lacks oauth, billing"
    )
    assert str(NotApplicable("external", "service_control", "it runs elsewhere")) == (
        "not applicable to external: lacks service_control (it runs elsewhere)"
    )
    assert (
        str(NotApplicable("external", "no second region")) == "not applicable to external: no second region"
    )


def test_journey_should_carry_and_validate_the_capabilities_it_needs() -> None:
    mark = journey(name="OAuth", priority="P0", mrr=1, components=["auth"], needs=["oauth", "oauth_linking"])
    assert mark.kwargs["needs"] == ["oauth", "oauth_linking"]
    assert validate_journey(**mark.kwargs).needs == ("oauth", "oauth_linking")
    assert validate_journey(name="Chat", priority="P1", components=["backend"]).needs == ()
    with pytest.raises(JourneyMarkerError, match="unknown capability 'oauht'; known capabilities: agent_"):
        journey(name="OAuth", priority="P0", components=["auth"], needs=["oauht"])
    with pytest.raises(JourneyMarkerError, match="needs must be a list"):
        validate_journey(name="OAuth", priority="P0", components=["auth"], needs="oauth")


def test_should_count_top_level_steps_statically() -> None:
    async def journey() -> None:
        async with step("a"):
            async with step("a.1"):
                pass
        with step("b"):
            pass

    assert count_steps(journey) == 2


def test_should_refuse_a_journey_with_an_unknown_component_at_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.journey(name="Chat", priority="P0", mrr=10, components=["auth", "kafka"])
        def test_chat():
            pass

        @pytest.mark.journey(name="Bill", priority="P9", mrr=10, components=["backend"])
        def test_bill():
            pass
        """
    )

    result = pytester.runpytest_subprocess("-p", "harness.plugin_browser", "-p", "no:cacheprovider")

    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "*ERROR collecting*",
            "*test_chat*unknown component(s) 'kafka'; known components: agent, auth, backend*",
        ]
    )


def test_report_plugin_should_be_hashable_as_pluggy_requires(pytestconfig: pytest.Config) -> None:
    """pluggy hashes plugins when conftests of sibling dirs are filtered (`pytest tests journeys`)."""
    from harness.report import ReportPlugin

    plugin = ReportPlugin(pytestconfig)
    assert {plugin: 1}[plugin] == 1
