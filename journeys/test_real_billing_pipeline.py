"""Journey: chat usage becomes ClickHouse usage, then an invoice in PostgreSQL, to the cent.

The expected tokens and cost are derived here, independently of the platform's output, from
the LLM stand-in's deterministic rule (docs/wiring.md: prompt_tokens = words over all message
contents, completion_tokens = words of the reply, 1 for a tool call), the prompts the backend
sends (stack/backend/agents.py: the agent's system prompt, the thread's history, the message;
the data agent adds the tool call and the tool's JSON result) and the per-token prices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from harness.app import App, TestUser, TurnEvent, UsageRecord
from harness.journey import journey
from harness.steps import step

COMPONENTS = ["frontend", "backend", "clickhouse", "postgres", "agent", "llm"]

PROMPT_PRICE, COMPLETION_PRICE = Decimal("0.000002"), Decimal("0.000004")  # USD per token, docs/wiring.md
MICRO = Decimal("0.000001")

# The system prompts the backend sends (stack/backend/agents.py SYSTEM_PROMPTS): a change to them
# changes what every customer is billed, so this journey pins them on purpose.
SYSTEM_PROMPTS = {
    "general": "You are Throughline's general assistant. Answer briefly and route nothing.",
    "data": "You are Throughline's data agent. Use get_my_usage to read the user's own usage before answering.",
}
TOOL = "get_my_usage"

GENERAL_MESSAGES = ["Hello, what can you help me with today?", "Tell me something about the weather"]
DATA_MESSAGE = "How much did I spend on tokens?"
BOB_MESSAGE = "Hi, I am Bob and I like short answers"


def words(text: str | None) -> int:
    return len((text or "").split())


def price(prompt: int, completion: int) -> Decimal:
    return (prompt * PROMPT_PRICE + completion * COMPLETION_PRICE).quantize(MICRO)


def money(value: Decimal) -> str:
    return f"{value.quantize(MICRO):.6f}"


@dataclass(frozen=True)
class Call:
    """One expected LLM call: what ClickHouse must hold as one usage row."""

    agent: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def cost(self) -> Decimal:
        return price(self.prompt_tokens, self.completion_tokens)


@dataclass
class ExpectedConversation:
    """The stand-in LLM's bill for one chat thread, computed from its documented rule."""

    history: list[str] = field(default_factory=list)  # contents of the thread's messages, oldest first
    calls: list[Call] = field(default_factory=list)

    def general_turn(self, content: str) -> tuple[str, list[Call]]:
        reply = f"Stand-in reply to: {content}"
        prompt = words(SYSTEM_PROMPTS["general"]) + sum(map(words, self.history)) + words(content)
        return self._record(content, reply, [Call("general", prompt, words(reply))])

    def data_turn(self, content: str) -> tuple[str, list[Call], dict[str, Any]]:
        """Call 1 (tools offered): the tool call; call 2: the same messages + tool call + tool result."""
        tool_result = self.usage_summary()
        tool_json = json.dumps(tool_result)
        first = words(SYSTEM_PROMPTS["data"]) + sum(map(words, self.history)) + words(content)
        reply = f"Stand-in reply to: {content} | {TOOL} returned: {tool_json}"
        # the assistant tool-call message has no content (0 words); the tool message is the JSON
        calls = [Call("data", first, 1), Call("data", first + words(tool_json), words(reply))]
        return (*self._record(content, reply, calls), tool_result)

    def _record(self, content: str, reply: str, calls: list[Call]) -> tuple[str, list[Call]]:
        self.history += [content, reply]
        self.calls += calls
        return reply, calls

    def usage_summary(self) -> dict[str, Any]:
        """What get_my_usage must return: this user's all-time usage so far, in total and by agent."""
        by_agent: dict[str, dict[str, Any]] = {}
        for c in self.calls:
            slot = by_agent.setdefault(
                c.agent,
                {
                    "agent": c.agent,
                    "events": 0,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "cost_usd": Decimal(0),
                },
            )
            slot["events"] += 1
            slot["prompt_tokens"] += c.prompt_tokens
            slot["completion_tokens"] += c.completion_tokens
            slot["cost_usd"] += c.cost
        prompt, completion = self.prompt_tokens, self.completion_tokens
        return {
            "scope": "all_time",
            "events": len(self.calls),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost_usd": money(self.cost),
            "by_agent": [{**v, "cost_usd": money(v["cost_usd"])} for _, v in sorted(by_agent.items())],
        }

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.calls)

    @property
    def cost(self) -> Decimal:
        return sum((c.cost for c in self.calls), Decimal(0))

    def by_agent(self) -> dict[str, tuple[int, int, Decimal]]:
        lines: dict[str, tuple[int, int, Decimal]] = {}
        for c in self.calls:
            p, q, cost = lines.get(c.agent, (0, 0, Decimal(0)))
            lines[c.agent] = (p + c.prompt_tokens, q + c.completion_tokens, cost + c.cost)
        return lines


def _turn_usage_matches(completed: TurnEvent, calls: list[Call], what: str) -> None:
    __tracebackhide__ = True
    usage = completed.usage or {}
    expected = (
        sum(c.prompt_tokens for c in calls),
        sum(c.completion_tokens for c in calls),
        sum((c.cost for c in calls), Decimal(0)),
        len(calls),
    )
    got = (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        Decimal(usage["cost_usd"]),
        usage.get("llm_calls"),
    )
    assert got == expected, (
        f"{what}: the reply reports (prompt, completion, cost, calls) {got}, expected {expected}"
    )


async def _usage_rows(app: App, user_id: str, count: int) -> list[UsageRecord]:
    async def rows() -> list[UsageRecord]:
        found = await app.records.usage(user_id=user_id)
        assert len(found) == count, (
            f"expected {count} usage rows in ClickHouse for the user, found {len(found)}"
        )
        return list(found)

    rows_found: list[UsageRecord] = await app.settle(
        rows, timeout=10, description=f"{count} usage rows in ClickHouse"
    )
    return rows_found


def _rows_as_calls(rows: list[UsageRecord]) -> list[tuple[str, int, int, Decimal]]:
    return sorted((str(r.agent), r.prompt_tokens, r.completion_tokens, Decimal(r.cost_usd)) for r in rows)


def _calls(calls: list[Call]) -> list[tuple[str, int, int, Decimal]]:
    return sorted((c.agent, c.prompt_tokens, c.completion_tokens, c.cost) for c in calls)


def period_of(instant: Any) -> str:
    """The billing month (YYYY-MM, UTC) an instant falls in."""
    if isinstance(instant, str):
        instant = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    assert isinstance(instant, datetime), f"a usage row's created_at is {instant!r}, not a timestamp"
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC).strftime("%Y-%m")


def bills_by_period(rows: list[UsageRecord]) -> dict[str, ExpectedConversation]:
    """The usage rows as the calls each month must bill, by the month the platform recorded them in.

    Every row was first matched to a derived call, so each month's bill is made of derived calls;
    which month a call falls in is the platform's timestamp: a run across a month boundary (its
    turns before midnight, its invoice after) bills each call in its own month, exactly.
    """
    bills: dict[str, ExpectedConversation] = {}
    for r in rows:
        bill = bills.setdefault(period_of(r.created_at), ExpectedConversation())
        bill.calls.append(Call(str(r.agent), r.prompt_tokens, r.completion_tokens))
    return dict(sorted(bills.items()))


async def _usage_api(app: App, user: TestUser, span: tuple[datetime, datetime]) -> dict[str, Any]:
    """The usage API over the whole journey (fresh users: everything they used), whatever the month."""
    answer = await app.my_usage(user, span[0].isoformat(), span[1].isoformat())
    assert answer.status == 200, f"the usage API answered {answer.status}: {answer.text}"
    return dict(answer.body)


async def _assert_exact_invoice(
    app: App, user: TestUser, period: str, bill: ExpectedConversation, models: set[str | None]
) -> tuple[dict[str, Any], Any]:
    """Generate `user`'s invoice for `period`: it bills exactly `bill`, and the billing store agrees.
    -> (the invoice, its stored row's id)."""
    __tracebackhide__ = True
    response = await app.invoice(user, period)
    assert response.status == 201, (
        f"generating the {period} invoice answered {response.status}: {response.text}"
    )
    invoice = dict(response.body)
    total = Decimal(invoice["total_usd"])
    assert total == bill.cost, (
        f"the {period} invoice totals {total} USD, the derived usage costs {bill.cost} USD"
    )
    assert total.quantize(Decimal("0.01")) == bill.cost.quantize(Decimal("0.01"))
    assert (invoice["period"], invoice["user_id"]) == (period, user.user_id), f"invoice header {invoice}"
    assert (invoice["prompt_tokens"], invoice["completion_tokens"]) == (
        bill.prompt_tokens,
        bill.completion_tokens,
    ), (
        f"the {period} invoice bills {invoice['prompt_tokens']}/{invoice['completion_tokens']} tokens, "
        f"expected {bill.prompt_tokens}/{bill.completion_tokens}"
    )
    lines = {
        ln["agent"]: (ln["prompt_tokens"], ln["completion_tokens"], Decimal(ln["amount_usd"]))
        for ln in invoice["lines"]
    }
    assert lines == bill.by_agent(), f"invoice lines by agent {lines}, expected {bill.by_agent()}"
    assert len(invoice["lines"]) == len(lines), f"the invoice repeats an agent: {invoice['lines']}"
    assert {ln["model"] for ln in invoice["lines"]} == models, "invoice lines name another model than usage"
    stored = await app.records.invoices(str(user.user_id), period)
    row = stored[0] if stored else None
    assert row is not None, f"the billing store has no invoice for the {period} invoice just generated"
    assert (str(row["id"]), row["total_usd"], row["prompt_tokens"], row["completion_tokens"]) == (
        invoice["id"],
        bill.cost,
        bill.prompt_tokens,
        bill.completion_tokens,
    ), f"the stored invoice {row} disagrees with the invoice {invoice['id']} / the derived usage"
    db_lines = await app.records.invoice_lines(row["id"])
    assert {
        ln["agent"]: (ln["prompt_tokens"], ln["completion_tokens"], ln["amount_usd"]) for ln in db_lines
    } == bill.by_agent(), f"the stored invoice lines: {db_lines}"
    return invoice, row["id"]


async def _usage_card_after_reload(
    app: App, page: Any, user: TestUser, bills: dict[str, ExpectedConversation]
) -> tuple[str, ExpectedConversation, Any]:
    """Reload the dashboard; -> (the month its "Usage this month" card is of, that month's bill,
    what the card shows). The card is of the browser's month (UTC) at the reload: a reload astride
    a month's end could show either month, so it is reloaded once more."""
    __tracebackhide__ = True
    for _ in range(2):
        month = period_of(datetime.now(UTC))
        bill = bills.get(month, ExpectedConversation())
        dashboard = await app.dashboard_page(page, user.full_name).reload()
        try:
            shown = await dashboard.wait_for_usage(bill.prompt_tokens + bill.completion_tokens)
        except AssertionError:
            if period_of(datetime.now(UTC)) == month:
                raise
            continue
        if period_of(datetime.now(UTC)) == month:
            return month, bill, shown
    raise AssertionError("two dashboard reloads in a row each straddled a month's end")


@journey(
    name="Billing: usage to invoice",
    priority="P0",
    mrr=200_000,
    components=COMPONENTS,
    needs=["agent_routing", "tool_calls", "usage_analytics", "billing"],
    drills=["invoice-rounds-lines-to-cents", "cost-rounded-to-cents"],
)
async def test_usage_becomes_an_exact_invoice(app: App, page: Any, ws_recorder: Any) -> None:
    """Known turns bill exactly the derived tokens and cost, in ClickHouse, the invoice and the dashboard."""
    # the journey's span for the usage API; which month anything is billed in comes from the
    # platform's own timestamps of the usage (bills_by_period), never from this clock
    started = datetime.now(UTC)
    span = (started - timedelta(hours=1), started + timedelta(days=1))
    alice = await app.users.logged_in("billing-alice", full_name="Alice Billing")
    bob = await app.users.logged_in("billing-bob", full_name="Bob Other")
    assert alice.user_id and bob.user_id
    expected = ExpectedConversation()
    expected_bob = ExpectedConversation()
    turns = app.turns(ws_recorder)

    async with step("Alice logs in through the UI and sends two general messages"):
        dashboard = await app.login(page, alice)
        for text in GENERAL_MESSAGES:
            reply_text, calls = expected.general_turn(text)
            reply = await dashboard.chat.ask(text)
            assert reply.agent == "general", f"{text!r} was answered by the {reply.agent!r} agent"
            assert reply.text == reply_text, (
                f"the reply to {text!r} reads {reply.text!r}, expected {reply_text!r}"
            )
            rid = (await turns.sent(text)).request_id
            _turn_usage_matches(
                await turns.wait_for("completed", request_id=rid, timeout=10),
                calls,
                f"the reply to {text!r}",
            )

    async with step("Alice asks the data agent, which reads her usage so far (2 LLM calls)"):
        # get_my_usage reads ClickHouse: wait until the two turns' usage got there
        await _usage_rows(app, alice.user_id, len(expected.calls))
        reply_text, calls, tool_result = expected.data_turn(DATA_MESSAGE)
        reply = await dashboard.chat.ask(DATA_MESSAGE)
        assert reply.agent == "data", f"{DATA_MESSAGE!r} was answered by the {reply.agent!r} agent"
        assert TOOL in reply.tools, f"the data agent's reply lists tools {reply.tools}, expected {TOOL}"
        rid = (await turns.sent(DATA_MESSAGE)).request_id
        tool = await turns.wait_for("tool_result", request_id=rid, timeout=10)
        assert tool.result == tool_result, (
            f"get_my_usage returned {tool.result}, Alice's usage so far is {tool_result}"
        )
        assert reply.text == " ".join(reply_text.split()), (
            f"the data agent replied {reply.text!r}, expected {reply_text!r}"
        )
        _turn_usage_matches(
            await turns.wait_for("completed", request_id=rid, timeout=10),
            calls,
            "the data agent's reply",
        )

    async with step("Bob chats in his own browser"):
        bob_browser = await app.page_for("bob")
        bob_dashboard = await app.login(bob_browser.page, bob)
        bob_reply_text, _ = expected_bob.general_turn(BOB_MESSAGE)
        bob_reply = await bob_dashboard.chat.ask(BOB_MESSAGE)
        assert bob_reply.text == bob_reply_text, f"Bob got the reply {bob_reply.text!r}"

    async with step("ClickHouse holds exactly the derived usage: one row per LLM call, tokens and cost"):
        alice_rows = await _usage_rows(app, alice.user_id, len(expected.calls))
        assert _rows_as_calls(alice_rows) == _calls(expected.calls), (
            f"Alice's usage rows (agent, prompt, completion, cost) are {_rows_as_calls(alice_rows)}, "
            f"derived from the stand-in's rule: {_calls(expected.calls)}"
        )
        assert sum((Decimal(r.cost_usd) for r in alice_rows), Decimal(0)) == expected.cost
        bob_rows = await _usage_rows(app, bob.user_id, len(expected_bob.calls))
        assert _rows_as_calls(bob_rows) == _calls(expected_bob.calls), f"Bob's usage rows are {bob_rows}"
        alice_rids = {e.request_id for e in turns.events("user_message", direction="sent")}
        assert {r.request_id for r in alice_rows} == alice_rids, "Alice is billed for requests she never sent"
        assert not {r.request_id for r in bob_rows} & alice_rids, "Bob's usage carries Alice's request ids"
        alice_bills, bob_bills = bills_by_period(alice_rows), bills_by_period(bob_rows)

    async with step("Failed (LLM 500) and rate-limited messages add no usage; the UI says so"):
        usage_before = await _usage_api(app, alice, span)
        refused: list[str] = []

        async def send(text: str) -> str:
            await dashboard.chat.send(text)
            sent = await turns.sent(text, timeout=10)
            refused.append(str(sent.request_id))
            return str(sent.request_id)

        async with step("The LLM answers 500: the turn fails and the banner says so"):
            await app.llm.set(fail_next=1, status=500)
            failed = await send("This message will meet a failing model")
            error = await turns.wait_for("error", request_id=failed, timeout=10)
            assert error.code == "llm_unavailable", (
                f"the failed turn answered {error.code!r}: {error.message!r}"
            )
            await dashboard.wait_for_error_banner("assistant is unavailable")

        if not app.supports("agent_concurrency_limit"):
            step.not_applicable(
                "Two replies in progress: a third message is rate limited", "lacks agent_concurrency_limit"
            )
        else:
            async with step("Two replies in progress: a third message is rate limited"):
                # each slow reply trickles 2 chunks 2.5 s apart, then its stream drops: Alice's 2 agent
                # slots stay taken for ~5 s, and the turns end in llm_unavailable, never in usage
                await app.llm.set(latency_ms=2500, drop_next=2)
                burst = ["First slow message", "Second slow message", "One message too many"]
                try:
                    # typed in one burst (Enter sends): all three reach the backend while the first two run
                    await dashboard.chat.type_burst(burst)
                    sent = [await turns.sent(text, timeout=10) for text in burst]
                    *slow, too_many = [str(event.request_id) for event in sent]
                    refused += [*slow, too_many]
                    limited = await turns.wait_for("rate_limited", request_id=too_many, timeout=10)
                finally:
                    await app.llm.reset()
                assert limited.scope == "agent", (
                    f"the third message was refused with scope {limited.scope!r}: {limited.frame}"
                )
                await dashboard.chat.message_item(request_id=too_many, role="user").wait_for_text(
                    "rate limited", 'the refused message marked "Not sent — rate limited."'
                )
                # the notice hides itself after retry_after (1 s): read what it said, shown or already hidden
                notice = await dashboard.last_rate_limit_notice()
                assert notice.scope == "agent" and "Too many replies are in progress" in notice.text, (
                    f"the rate-limit notice said {notice.text!r}"
                )
                for rid in slow:
                    error = await turns.wait_for("error", request_id=rid, timeout=30)
                    assert error.code == "llm_unavailable", (
                        f"a dropped reply ended with {error.code!r}: {error.message!r}"
                    )

        for rid in refused:
            assert not await app.records.messages(request_id=rid), (
                f"the refused message {rid} was stored in PostgreSQL"
            )
            if app.supports("usage_outbox"):
                assert await app.records.pending_usage(rid) == 0, (
                    f"the refused message {rid} queued usage for ClickHouse"
                )
        usage_after = await _usage_api(app, alice, span)  # settles the outbox before reading ClickHouse
        assert usage_after == usage_before, f"Alice's usage changed from {usage_before} to {usage_after}"
        assert len(await app.records.usage(user_id=alice.user_id)) == len(expected.calls), (
            "ClickHouse gained usage rows from refused messages"
        )

    async with step("The invoice of the month the usage was recorded in equals it to the cent"):
        invoices: dict[str, dict[str, Any]] = {}
        invoice_rows: dict[str, Any] = {}
        for period, bill in alice_bills.items():
            models = {r.model for r in alice_rows if period_of(r.created_at) == period}
            invoices[period], invoice_rows[period] = await _assert_exact_invoice(
                app, alice, period, bill, models
            )
        billed = sum((Decimal(inv["total_usd"]) for inv in invoices.values()), Decimal(0))
        assert billed == expected.cost, (
            f"Alice's invoices ({', '.join(invoices)}) total {billed} USD, her derived usage costs "
            f"{expected.cost} USD"
        )

    async with step("The dashboard's 'Usage this month' shows the same tokens and cost after a reload"):
        month, this_month, shown = await _usage_card_after_reload(app, page, alice, alice_bills)
        tokens = this_month.prompt_tokens + this_month.completion_tokens
        assert (shown.tokens, shown.cost_usd) == (tokens, this_month.cost), (
            f"'Usage this month' ({month}) shows {shown.tokens} tokens / {shown.cost_usd} USD, the "
            f"{month} invoice bills {tokens} tokens / {this_month.cost} USD"
        )

    async with step("Regenerating the same period returns the same invoice; PostgreSQL keeps one"):
        for period, invoice in invoices.items():
            again = await app.invoice(alice, period)
            assert again.status == 200, f"regenerating the invoice answered {again.status}: {again.text}"
            assert again.body == invoice, f"regenerating gave {again.body}, first time {invoice}"
            assert len(await app.records.invoices(alice.user_id, period)) == 1
            assert len(await app.records.invoice_lines(invoice_rows[period])) == len(invoice["lines"])

    async with step("Bob's usage never shows in Alice's usage or invoice"):
        alice_usage = await _usage_api(app, alice, span)
        assert (alice_usage["events"], alice_usage["total_tokens"], Decimal(alice_usage["cost_usd"])) == (
            len(expected.calls),
            expected.prompt_tokens + expected.completion_tokens,
            expected.cost,
        ), f"Alice's usage API says {alice_usage}"
        bob_usage = await _usage_api(app, bob, span)
        assert (bob_usage["events"], Decimal(bob_usage["cost_usd"])) == (
            len(expected_bob.calls),
            expected_bob.cost,
        ), f"Bob's usage API says {bob_usage}"
        alice_invoice_ids = {inv["id"] for inv in invoices.values()}
        for period, bill in bob_bills.items():
            bob_invoice = await app.invoice(bob, period)
            assert bob_invoice.status == 201, (
                f"Bob's invoice answered {bob_invoice.status}: {bob_invoice.text}"
            )
            assert bob_invoice.body["id"] not in alice_invoice_ids, "Bob was handed Alice's invoice"
            assert Decimal(bob_invoice.body["total_usd"]) == bill.cost, f"Bob's invoice {bob_invoice.body}"
        for period, invoice in invoices.items():
            assert (await app.invoice(alice, period)).body == invoice, "Bob's invoice changed Alice's"

    async with step("An invalid period is refused with 422 and stores nothing"):
        # the last: a month Alice has an invoice for, with a line break after it
        for bad in ("2026-13", "2026-1", "not-a-month", None, f"{next(iter(invoices))}\n"):
            refused_response = await app.invoice(alice, bad)
            assert refused_response.status == 422, (
                f"period {bad!r} answered {refused_response.status}: {refused_response.text}"
            )
        assert len(await app.records.invoices(alice.user_id)) == len(invoices), (
            "an invalid period created an invoice"
        )
