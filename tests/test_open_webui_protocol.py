"""The Open WebUI decoder and packet codec on frames captured from Open WebUI 0.12.4 (no server needed).

The frames below were recorded on this machine: a program's socket (token in the connect auth,
user-join with an ack) and the reply to one message that made the model call the built-in tool
get_current_timestamp; the browser's greeting frames; the error frame of a turn the LLM failed
(HTTP 500); and the body of the chat request the browser posted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from harness.app import TurnEvent
from targets.open_webui.protocol import (
    HTTP_TURN_MARK,
    OpenWebUIDecoder,
    OpenWebUITurns,
    RequestFrame,
    TurnRequests,
    encode_connect,
    encode_event,
    output_text,
    parse_packet,
    turn_refusal_frame,
    turn_request_frame,
)

CHAT_ID = "c80d2d27-8326-4cf9-be97-621fc09916ef"
REPLY_ID = "c92f72b8-da49-43d1-aa36-a8954a4c7645"
USER_MESSAGE_ID = "7eed8bd6-6e11-42e9-b396-ac54bb5b5fe5"

TOOL_TURN = [
    '431[{"id":"f019470f-ad16-4050-ad71-8d5cc395cf24","name":"Prog User"}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"7eed8bd6-6e11-42e9-b396-ac54bb5b5fe5","data":{"type":"chat:list","data":{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","folder_id":null}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"chat:active","data":{"active":true,"folder_id":null}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","id":"call_ad34b8a38ad25614b43194a3","call_id":"call_ad34b8a38ad25614b43194a3","name":"get_current_timestamp","arguments":"","status":"in_progress"}}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.function_call_arguments.delta","item_id":"call_ad34b8a38ad25614b43194a3","output_index":0,"delta":""}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.function_call_arguments.delta","item_id":"call_ad34b8a38ad25614b43194a3","output_index":0,"delta":"{}"}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"chat:completion","data":{"id":"chatcmpl-421ce1c219f446b180a059ff","object":"chat.completion.chunk","created":1796130226,"model":"standin-gpt","system_fingerprint":"fp_standin","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"chat:completion","data":{"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5,"input_tokens":4,"output_tokens":1}}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.function_call_arguments.done","item_id":"call_ad34b8a38ad25614b43194a3","output_index":0,"arguments":"{}"}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_item.done","output_index":0,"item":{"type":"function_call","id":"call_ad34b8a38ad25614b43194a3","call_id":"call_ad34b8a38ad25614b43194a3","name":"get_current_timestamp","arguments":"{}","status":"completed"}}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_item.done","output_index":0,"item":{"type":"function_call","id":"call_ad34b8a38ad25614b43194a3","call_id":"call_ad34b8a38ad25614b43194a3","name":"get_current_timestamp","arguments":"{}","status":"completed"}}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_item.done","output_index":0,"item":{"type":"function_call","id":"call_ad34b8a38ad25614b43194a3","call_id":"call_ad34b8a38ad25614b43194a3","name":"get_current_timestamp","arguments":"{}","status":"completed"}}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_item.done","output_index":1,"item":{"type":"function_call_output","id":"fco_5423546f5c50477ebe8d88bf","call_id":"call_ad34b8a38ad25614b43194a3","output":[{"type":"input_text","text":"{\\"current_timestamp\\":1796130226,\\"current_iso\\":\\"2026-12-01T13:03:46.636988+00:00\\"}"}],"status":"completed"}}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_text.delta","item_id":"msg_afc01910248b4220b466891f","output_index":2,"content_index":0,"delta":"Stand-in "}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_text.delta","item_id":"msg_afc01910248b4220b466891f","output_index":2,"content_index":0,"delta":"reply "}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_text.delta","item_id":"msg_afc01910248b4220b466891f","output_index":2,"content_index":0,"delta":"to: "}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_text.delta","item_id":"msg_afc01910248b4220b466891f","output_index":2,"content_index":0,"delta":"What "}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_text.delta","item_id":"msg_afc01910248b4220b466891f","output_index":2,"content_index":0,"delta":"time "}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_text.delta","item_id":"msg_afc01910248b4220b466891f","output_index":2,"content_index":0,"delta":"is "}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_text.delta","item_id":"msg_afc01910248b4220b466891f","output_index":2,"content_index":0,"delta":"it? "}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_text.delta","item_id":"msg_afc01910248b4220b466891f","output_index":2,"content_index":0,"delta":"| "}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_text.delta","item_id":"msg_afc01910248b4220b466891f","output_index":2,"content_index":0,"delta":"get_current_timestamp "}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_text.delta","item_id":"msg_afc01910248b4220b466891f","output_index":2,"content_index":0,"delta":"returned: "}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"response:completion","data":{"type":"response.output_text.delta","item_id":"msg_afc01910248b4220b466891f","output_index":2,"content_index":0,"delta":"{\\"current_timestamp\\":1796130226,\\"current_iso\\":\\"2026-12-01T13:03:46.636988+00:00\\"}"}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"chat:completion","data":{"id":"chatcmpl-7778670500bb41aa9dd55ad8","object":"chat.completion.chunk","created":1796130226,"model":"standin-gpt","system_fingerprint":"fp_standin","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"chat:completion","data":{"usage":{"prompt_tokens":5,"completion_tokens":11,"total_tokens":21,"input_tokens":9,"output_tokens":12}}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"chat:list","data":{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","folder_id":null}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"chat:completion","data":{"done":true,"output":[{"type":"function_call","id":"call_ad34b8a38ad25614b43194a3","call_id":"call_ad34b8a38ad25614b43194a3","name":"get_current_timestamp","arguments":"{}","status":"completed"},{"type":"function_call_output","id":"fco_5423546f5c50477ebe8d88bf","call_id":"call_ad34b8a38ad25614b43194a3","output":[{"type":"input_text","text":"{\\"current_timestamp\\":1796130226,\\"current_iso\\":\\"2026-12-01T13:03:46.636988+00:00\\"}"}],"status":"completed"},{"type":"message","id":"msg_afc01910248b4220b466891f","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Stand-in reply to: What time is it? | get_current_timestamp returned: {\\"current_timestamp\\":1796130226,\\"current_iso\\":\\"2026-12-01T13:03:46.636988+00:00\\"}"}]}],"title":"New Chat","usage":{"prompt_tokens":5,"completion_tokens":11,"total_tokens":21,"input_tokens":9,"output_tokens":12}}}}]',
    '42["events",{"chat_id":"c80d2d27-8326-4cf9-be97-621fc09916ef","message_id":"c92f72b8-da49-43d1-aa36-a8954a4c7645","data":{"type":"chat:active","data":{"active":false,"folder_id":null}}}]',
]

BROWSER_GREETING = [
    (
        "received",
        '0{"sid":"Lq0oCukj0Mig0kd0AAAA","upgrades":[],"pingTimeout":20000,"pingInterval":25000,"maxPayload":16777216}',
    ),
    ("sent", "40{}"),
    ("received", '40{"sid":"Kso2WS9OCRM0wBrMAAAB"}'),
    ("sent", '42["user-join",{"auth":{"token":"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.sig"}}]'),
    ("sent", '420["events:chat",{"chat_id":"6ab8f98b-8be2-4ec4-a22d-e0b635868522","data":{"type":"join"}}]'),
    ("received", "430[true]"),
    ("received", "2"),
    ("sent", "3"),
    (
        "received",
        '42["events",{"chat_id":"6ab8f98b-8be2-4ec4-a22d-e0b635868522","shared":true,"data":{"type":"chat:presence",'
        '"data":{"users":[{"id":"17806920-d076-47ce-92ba-059de563a98f","name":"Ada"}]}}}]',
    ),
]
REFUSED_USER_JOIN = "431[]"
FAILED_TURN = (
    '42["events",{"chat_id":"df63375c-0b1e-46ee-b603-cbb260d9cf4b","message_id":"b8c8fa67-1d19-47ba-8c67-de6be017c879",'
    '"data":{"type":"chat:message:error","data":{"error":{"content":"The server had an error while processing your '
    'request (stand-in fail_next)."},"done":true}}}]'
)
BROWSER_TURN_REQUEST = {
    "stream": True,
    "model": "standin-gpt",
    "params": {"model_controls": {}},
    "tool_ids": [],
    "features": {
        "voice": False,
        "image_generation": False,
        "code_interpreter": False,
        "web_search": False,
        "memory": True,
    },
    "variables": {"{{USER_NAME}}": "Ada Lovelace", "{{USER_EMAIL}}": "ui-d3b2c1@example.test"},
    "session_id": "hoKsuT_nucR6Z2r0AAAZ",
    "id": "34bf2326-fad0-445e-9f2e-b11da0ca4a5d",
    "message_ids": [
        {"model_id": "standin-gpt", "message_id": "34bf2326-fad0-445e-9f2e-b11da0ca4a5d", "modelIdx": 0}
    ],
    "parent_id": None,
    "user_message": {
        "id": "d7c8206b-408a-40a1-aa83-4d72c05ff71b",
        "parentId": None,
        "childrenIds": ["34bf2326-fad0-445e-9f2e-b11da0ca4a5d"],
        "role": "user",
        "user_id": "f1406fa9-2077-407b-bf2d-74e67c83d658",
        "content": "Hello there, what can you do?",
        "timestamp": 1796130312,
        "models": ["standin-gpt"],
    },
}


def decode_all(frames: list[str], decoder: OpenWebUIDecoder | None = None) -> list[TurnEvent]:
    decoder = decoder or OpenWebUIDecoder()
    return [event for text in frames for event in decoder.decode(text, "received")]


# -- packets ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "engineio", "socketio", "ack_id"),
    [
        ('0{"sid":"x","pingInterval":25000}', "open", None, None),
        ("2", "ping", None, None),
        ("3", "pong", None, None),
        ("40{}", "message", "connect", None),
        ('40{"sid":"Kso2WS9OCRM0wBrMAAAB"}', "message", "connect", None),
        ('420["events:chat",{"chat_id":"c"}]', "message", "event", 0),
        ("430[true]", "message", "ack", 0),
        ('4312[{"id":"u","name":"Ada"}]', "message", "ack", 12),
        ('44{"message":"unauthorized"}', "message", "connect_error", None),
    ],
)
def test_packets_parse_into_engineio_and_socketio_parts(
    text: str, engineio: str, socketio: str | None, ack_id: int | None
) -> None:
    packet = parse_packet(text)
    assert packet is not None, f"{text!r} did not parse"
    assert (packet.engineio, packet.socketio, packet.ack_id) == (engineio, socketio, ack_id)


def test_an_event_packet_names_its_event_and_arguments() -> None:
    packet = parse_packet(TOOL_TURN[1])
    assert packet is not None and packet.event == "events"
    assert packet.args[0]["chat_id"] == CHAT_ID


@pytest.mark.parametrize("text", ["", "{this is not json", "4x", '42["events",{broken'])
def test_what_is_no_packet_parses_to_none(text: str) -> None:
    assert parse_packet(text) is None


def test_encoders_write_what_the_parser_reads() -> None:
    assert encode_connect({"token": "t"}) == '40{"token": "t"}'
    packet = parse_packet(encode_event("user-join", {"auth": {"token": "t"}}, ack_id=3))
    assert packet is not None
    assert (packet.event, packet.ack_id, packet.args) == ("user-join", 3, [{"auth": {"token": "t"}}])


# -- the turn ---------------------------------------------------------------------------------
def test_a_tool_turn_decodes_in_the_contract_order() -> None:
    kinds = [e.kind for e in decode_all(TOOL_TURN)]
    assert kinds == ["connected", "turn_started", "tool_call", "tool_result"] + ["chunk"] * 11 + ["completed"]


def test_the_user_join_ack_is_the_greeting_naming_the_user() -> None:
    (event,) = OpenWebUIDecoder().decode(TOOL_TURN[0], "received")
    assert (event.kind, event.user_id) == ("connected", "f019470f-ad16-4050-ad71-8d5cc395cf24")


def test_an_empty_user_join_ack_is_no_greeting() -> None:
    assert OpenWebUIDecoder().decode(REFUSED_USER_JOIN, "received") == []


def test_every_turn_event_carries_the_reply_id_as_request_id_and_the_chat_as_thread() -> None:
    events = [e for e in decode_all(TOOL_TURN) if e.kind != "connected"]
    assert {(e.request_id, e.thread_id, e.message_id) for e in events} == {(REPLY_ID, CHAT_ID, REPLY_ID)}


def test_the_tool_call_and_its_result_name_the_tool() -> None:
    events = decode_all(TOOL_TURN)
    call = next(e for e in events if e.kind == "tool_call")
    result = next(e for e in events if e.kind == "tool_result")
    assert call.tool == result.tool == "get_current_timestamp"
    assert result.result == {
        "current_timestamp": 1796130226,
        "current_iso": "2026-12-01T13:03:46.636988+00:00",
    }


def test_the_streamed_chunks_add_up_to_the_completed_reply() -> None:
    events = decode_all(TOOL_TURN)
    done = events[-1]
    assert done.kind == "completed"
    assert "".join(e.chunk or "" for e in events if e.kind == "chunk") == done.content
    assert done.content is not None and done.content.startswith(
        "Stand-in reply to: What time is it? | get_current_timestamp"
    )


def test_the_completed_turn_reports_the_usage_as_sent_and_the_model_that_answered() -> None:
    done = decode_all(TOOL_TURN)[-1]
    assert done.usage == {
        "prompt_tokens": 5,
        "completion_tokens": 11,
        "total_tokens": 21,
        "input_tokens": 9,
        "output_tokens": 12,
    }
    assert done.agent == "standin-gpt"


def test_frames_without_a_turn_fact_decode_to_nothing() -> None:
    quiet = [
        TOOL_TURN[1],
        TOOL_TURN[7],
        TOOL_TURN[8],
        TOOL_TURN[-1],
    ]  # chat:list, finish chunk, usage, inactive
    assert decode_all(quiet) == []
    for direction, text in BROWSER_GREETING:
        assert OpenWebUIDecoder().decode(text, direction) == [], f"{text!r} decoded to an event"


def test_an_unknown_chat_event_is_other() -> None:
    text = '42["events",{"chat_id":"c","message_id":"m","data":{"type":"chat:rockets","data":{}}}]'
    (event,) = OpenWebUIDecoder().decode(text, "received")
    assert (event.kind, event.request_id) == ("other", "m")


def test_a_failed_turn_is_an_error_with_the_message_shown() -> None:
    (event,) = OpenWebUIDecoder().decode(FAILED_TURN, "received")
    assert (event.kind, event.request_id) == ("error", "b8c8fa67-1d19-47ba-8c67-de6be017c879")
    assert event.message == "The server had an error while processing your request (stand-in fail_next)."
    assert event.code is None, "Open WebUI names no error code; the adapter must not invent one"


def test_a_connect_error_is_an_error() -> None:
    (event,) = OpenWebUIDecoder().decode('44{"message":"unauthorized"}', "received")
    assert (event.kind, event.code, event.message) == ("error", "connect_error", "unauthorized")


def test_the_decoder_reads_the_recorders_text_when_it_parsed_a_frame_as_a_number() -> None:
    @dataclass
    class Frame:
        text: str
        index: int = 0

    # The recorder JSON-parses every frame: "40" becomes the int 40, "2" the int 2.
    assert OpenWebUIDecoder().decode(40, "received", Frame("40")) == []
    (event,) = OpenWebUIDecoder().decode(None, "received", Frame(TOOL_TURN[0]))
    assert event.kind == "connected"


def test_the_browsers_turn_request_is_the_sent_user_message() -> None:
    (event,) = OpenWebUIDecoder().decode(turn_request_frame(BROWSER_TURN_REQUEST), "sent")
    assert (event.kind, event.direction) == ("user_message", "sent")
    assert event.content == "Hello there, what can you do?"
    assert event.request_id == "34bf2326-fad0-445e-9f2e-b11da0ca4a5d", (
        "the request id is the reply's message id"
    )
    assert event.message_id == "d7c8206b-408a-40a1-aa83-4d72c05ff71b"
    assert event.thread_id is None, "a new chat has no id before the server makes it"


def test_output_text_joins_message_items_only() -> None:
    done = json.loads(TOOL_TURN[-2][2:])[1]["data"]["data"]
    assert output_text(done["output"]).startswith("Stand-in reply to: What time is it?")
    assert output_text(None) == ""


# -- turns across the socket and the turn request --------------------------------------------
@dataclass
class RecordedFrame:
    index: int
    direction: str
    text: str
    at: float = 0.0
    url: str = "ws://x/ws/socket.io/"
    connection: int = 1

    @property
    def data(self) -> Any:
        return None


class FakeRecorder:
    """The part of the WsRecorder the turns read: frames, and the ids of the pages it records."""

    def __init__(self, texts: list[str]) -> None:
        self._frames = [RecordedFrame(i, "received", t) for i, t in enumerate(texts)]
        self._pages = {1}

    def frames(self, type: str | None = None, direction: str | None = None) -> list[RecordedFrame]:
        return [f for f in self._frames if direction in (None, f.direction)]


def test_turns_merge_the_turn_request_before_the_socket_frames_it_caused() -> None:
    recorder = FakeRecorder(TOOL_TURN[:3])
    requests = TurnRequests()
    turns = OpenWebUITurns(recorder, OpenWebUIDecoder(), requests)  # type: ignore[arg-type]
    body = {**BROWSER_TURN_REQUEST, "id": REPLY_ID}
    requests._by_page[1] = [
        RequestFrame(0.5, 0.0, "http://x" + "/api/chat/completions", turn_request_frame(body))
    ]
    kinds = [(e.direction, e.kind) for e in turns.events()]
    assert kinds == [("received", "connected"), ("sent", "user_message"), ("received", "turn_started")]
    sent = turns.events("user_message", direction="sent")[0]
    assert [e.kind for e in turns.events(after=sent)] == ["turn_started"]
    assert [e.kind for e in turns.of_request(REPLY_ID)] == ["turn_started"]
    assert RequestFrame(0.5, 0.0, "u", turn_request_frame(body)).type == HTTP_TURN_MARK


def test_a_refused_turn_request_is_the_turn_s_error_right_after_the_request() -> None:
    """A turn refused over HTTP (a store down, another user's chat) never reaches the socket: the
    answer is its outcome, an error naming the status and Open WebUI's `detail` (or the bare text)."""
    recorder, page = FakeRecorder(TOOL_TURN[:1]), object()
    recorder._pages = {id(page)}
    requests = TurnRequests()
    requests._by_page[id(page)] = []
    turns = OpenWebUITurns(recorder, OpenWebUIDecoder(), requests)  # type: ignore[arg-type]
    body = {**BROWSER_TURN_REQUEST, "id": REPLY_ID, "chat_id": "chat-1"}
    url = "http://x/api/chat/completions"
    requests._append(page, url, turn_request_frame(body), "sent")
    requests._append(page, url, turn_refusal_frame(body, 503, '{"detail":"Storage is down."}'), "received")  # type: ignore[arg-type]
    sent = turns.events("user_message", direction="sent")[0]
    (error,) = turns.events("error", after=sent)
    assert (error.request_id, error.thread_id, error.message) == (
        REPLY_ID,
        body["chat_id"],
        "Storage is down.",
    )
    bare = turn_refusal_frame(body, 500, "Internal Server Error\n")
    (plain,) = OpenWebUIDecoder().decode(bare, "received", bare)
    assert (plain.message, bare["status"]) == ("Internal Server Error", 500)
    assert requests.last_body(page) == body  # the refusal is no request
