"""The `openai` provider against a real local chat-completions server (no network): the
client on its own, then inside a real agent process.

The server (tests/fakechat.py) is a ThreadingHTTPServer on 127.0.0.1 in a thread, scripted per
test with a queue of responses (status, body, delay, headers); it records every request.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from conftest import run_yaml
from fakechat import FakeChatServer, Scripted, completion, tool_call
from pydantic import JsonValue

from agent_worker.models import ActionCall, ModelDecision, ModelError, ModelRequest
from agent_worker.models.openai_compat import OpenAIModel
from orchestrator.report.model import Verdict
from protocol import ActionInfo, Msg, OpenAIModelConfig, Origin

FAST_BACKOFF = 0.01


def make_request(actions: tuple[ActionInfo, ...] = (), text: str = "hello there") -> ModelRequest:
    return ModelRequest(
        agent_id="bob",
        agent_name="Bob",
        system="You are Bob.",
        message=Msg(msg_id="m1", sender="alice", room="r1", text=text, origin=Origin.SCRIPT),
        actions=actions,
    )


def make_model(
    server: FakeChatServer,
    *,
    backoff_s: float = FAST_BACKOFF,
    environ: dict[str, str] | None = None,
    **overrides: object,
) -> OpenAIModel:
    fields: dict[str, object] = {
        "base_url": server.base_url,
        "model": "test-model",
        "timeout_s": 0.3,
        "max_retries": 2,
        **overrides,
    }
    config = OpenAIModelConfig.model_validate(fields)
    return OpenAIModel(config, environ if environ is not None else {}, backoff_s=backoff_s)


def decide(model: OpenAIModel, request: ModelRequest | None = None) -> ModelDecision:
    async def go() -> ModelDecision:
        try:
            return await model.decide(request or make_request())
        finally:
            await model.close()

    return asyncio.run(go())


def decide_error(model: OpenAIModel, request: ModelRequest | None = None) -> str:
    with pytest.raises(ModelError) as info:
        decide(model, request)
    return str(info.value)


# --- answers ---------------------------------------------------------------------------------


def test_reply_text(server: FakeChatServer) -> None:
    server.push(Scripted(body=completion("Hi Alice!")))
    model = make_model(server)
    decision = decide(model)
    assert decision.reply == "Hi Alice!"
    assert decision.actions == []
    assert (model.calls, model.http_attempts) == (1, 1)
    assert model.problems_at_end() == []


def test_tool_call_becomes_action_with_parsed_params(server: FakeChatServer) -> None:
    server.push(
        Scripted(
            body=completion(
                None,
                [
                    tool_call("SEND_TOKENS", '{"to": "carol", "amount": 5, "memo": null}'),
                    tool_call("IGNORE", "", call_id="call_2"),
                    tool_call("NOOP", None, call_id="call_3"),
                ],
            )
        )
    )
    decision = decide(make_model(server))
    assert decision.reply is None
    assert decision.actions == [
        ActionCall("SEND_TOKENS", {"to": "carol", "amount": 5, "memo": None}),
        ActionCall("IGNORE", {}),
        ActionCall("NOOP", {}),
    ]


def test_empty_content_is_no_reply(server: FakeChatServer) -> None:
    server.push(Scripted(body=completion("")))
    assert decide(make_model(server)).reply is None


def test_request_sent(server: FakeChatServer) -> None:
    server.push(Scripted(body=completion("ok")))
    schema: dict[str, JsonValue] = {
        "type": "object",
        "properties": {"to": {"type": "string"}, "amount": {"type": "integer"}},
        "required": ["to", "amount"],
    }
    actions = (
        ActionInfo(name="SEND_TOKENS", description="Send tokens.", parameters=schema),
        ActionInfo(name="IGNORE", description="Say nothing."),
    )
    model = make_model(
        server,
        environ={"TEST_OPENAI_KEY": "sk-secret"},
        api_key_env="TEST_OPENAI_KEY",
        temperature=0.25,
        system_prompt="Be brief.",
    )
    decide(model, make_request(actions, text="send 5 to carol"))

    [sent] = server.wait_for_requests(1)
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == "Bearer sk-secret"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.json() == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "Be brief.\n\nYou are Bob."},
            {"role": "user", "content": "alice: send 5 to carol"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "SEND_TOKENS",
                    "description": "Send tokens.",
                    "parameters": schema,
                },
            },
            {
                "type": "function",
                "function": {
                    "name": "IGNORE",
                    "description": "Say nothing.",
                    "parameters": {"type": "object", "properties": {}},
                },
            },
        ],
        "temperature": 0.25,
    }


def test_minimal_request_omits_optional_fields(server: FakeChatServer) -> None:
    server.push(Scripted(body=completion("ok")))
    decide(make_model(server))
    [sent] = server.wait_for_requests(1)
    assert "Authorization" not in sent.headers
    assert sent.json() == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "You are Bob."},
            {"role": "user", "content": "alice: hello there"},
        ],
    }


# --- retries ---------------------------------------------------------------------------------


def test_timeout_retried_then_reported(server: FakeChatServer) -> None:
    server.push(*[Scripted(body=completion("late"), delay=2.0) for _ in range(3)])
    model = make_model(server, timeout_s=0.3, max_retries=2)
    message = decide_error(model)
    assert "timed out after 0.3s" in message
    assert "after 3 attempt(s)" in message
    assert server.base_url + "chat/completions" in message
    assert len(server.wait_for_requests(3)) == 3
    assert model.http_attempts == 3


def test_500_retried_then_reported(server: FakeChatServer) -> None:
    server.push(*[Scripted(500, b'{"error": "boom"}') for _ in range(4)])
    model = make_model(server, max_retries=3)
    message = decide_error(model)
    assert "after 4 attempt(s)" in message
    assert 'HTTP 500: {"error": "boom"}' in message
    assert "\n" not in message
    assert len(server.received) == 4
    assert model.http_attempts == 4


def test_500_then_200_succeeds(server: FakeChatServer) -> None:
    server.push(Scripted(503, b"overloaded"), Scripted(body=completion("second time lucky")))
    model = make_model(server)
    assert decide(model).reply == "second time lucky"
    assert (model.calls, model.http_attempts, len(server.received)) == (1, 2, 2)


def test_429_retried_honouring_retry_after(server: FakeChatServer) -> None:
    server.push(
        Scripted(429, b"slow down", headers={"Retry-After": "0.3"}),
        Scripted(body=completion("ok")),
    )
    model = make_model(server)
    assert decide(model).reply == "ok"
    first, second = server.wait_for_requests(2)
    assert second.at - first.at >= 0.25  # waited per Retry-After, not the 0.01s backoff


def test_default_backoff_grows(server: FakeChatServer) -> None:
    server.push(Scripted(500, b"a"), Scripted(500, b"b"), Scripted(body=completion("ok")))
    model = make_model(server, backoff_s=0.1)
    assert decide(model).reply == "ok"
    first, second, third = server.wait_for_requests(3)
    assert second.at - first.at >= 0.09
    assert third.at - second.at >= 0.19  # doubled


def test_400_not_retried(server: FakeChatServer) -> None:
    server.push(Scripted(400, b'{"error": {"message": "bad model"}}'), Scripted(body=completion()))
    model = make_model(server)
    message = decide_error(model)
    assert "HTTP 400" in message and "bad model" in message
    assert "after 1 attempt(s)" in message
    assert len(server.received) == 1
    assert model.http_attempts == 1


def test_connection_refused_retried_then_reported() -> None:
    with socket.socket() as probe:  # a port nobody listens on (bound, then released)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = OpenAIModelConfig(
        base_url=f"http://127.0.0.1:{port}", model="m", timeout_s=0.3, max_retries=1
    )
    model = OpenAIModel(config, {}, backoff_s=FAST_BACKOFF)
    message = decide_error(model)
    assert "connection error" in message and "after 2 attempt(s)" in message
    assert model.http_attempts == 2


def test_calls_run_off_the_event_loop(server: FakeChatServer) -> None:
    """Two concurrent decides are in flight on the server at once: neither blocks the loop."""
    server.push(*[Scripted(body=completion("ok"), delay=0.2) for _ in range(2)])
    model = make_model(server, timeout_s=2.0)

    async def both() -> list[ModelDecision]:
        return list(
            await asyncio.gather(model.decide(make_request()), model.decide(make_request()))
        )

    assert [d.reply for d in asyncio.run(both())] == ["ok", "ok"]
    assert server.max_in_flight == 2


# --- bad responses and configuration ---------------------------------------------------------


def test_malformed_tool_arguments(server: FakeChatServer) -> None:
    server.push(Scripted(body=completion(None, [tool_call("SEND_TOKENS", '{"to": "carol",')])))
    model = make_model(server)
    message = decide_error(model)
    assert "tool_calls[0] (SEND_TOKENS) arguments are not JSON" in message
    assert model.http_attempts == 1


def test_tool_arguments_not_an_object(server: FakeChatServer) -> None:
    server.push(Scripted(body=completion(None, [tool_call("SEND_TOKENS", "[1, 2]")])))
    assert "not a JSON object" in decide_error(make_model(server))


def test_response_not_json(server: FakeChatServer) -> None:
    server.push(Scripted(body=b"<html>gateway</html>"))
    model = make_model(server)
    assert "response is not JSON: <html>gateway</html>" in decide_error(model)
    assert model.http_attempts == 1


def test_response_without_choices(server: FakeChatServer) -> None:
    server.push(Scripted(body={"error": "nope"}), Scripted(body={"choices": []}))
    assert "no choices" in decide_error(make_model(server))
    assert "no choices" in decide_error(make_model(server))


@pytest.mark.parametrize("environ", [{}, {"TEST_OPENAI_KEY": ""}])
def test_missing_api_key(environ: dict[str, str]) -> None:
    config = OpenAIModelConfig(
        base_url="http://127.0.0.1:9", model="m", api_key_env="TEST_OPENAI_KEY"
    )
    with pytest.raises(ModelError, match="TEST_OPENAI_KEY"):
        OpenAIModel(config, environ)


def test_bad_base_url() -> None:
    with pytest.raises(ModelError, match="not an http"):
        OpenAIModel(OpenAIModelConfig(base_url="ftp://example", model="m"), {})


# --- through a real agent process ------------------------------------------------------------


def test_openai_agent_end_to_end(
    server: FakeChatServer, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent process whose model is the local server: a reply, a tool call that runs the
    plugin's action with its arguments, a timeout and a 500 (each retried, then reported as an
    error), and the agent still answering afterwards."""
    monkeypatch.setenv("FAKE_CHAT_KEY", "sekrit")
    server.push(
        Scripted(body=completion("hello alice")),
        Scripted(body=completion(None, [tool_call("DIVIDE", '{"a": 6, "b": 3}')])),
        Scripted(delay=2.0, body=completion("too late")),
        Scripted(delay=2.0, body=completion("too late")),
        Scripted(500, {"error": {"message": "upstream exploded"}}),
        Scripted(500, {"error": {"message": "upstream exploded"}}),
        Scripted(body=completion("still here")),
    )
    report = run_yaml(
        f"""
name: openai-agent
agents:
  - id: bot
    plugins: [examples.plugins.faults:plugin]
    model:
      openai:
        base_url: "{server.base_url}"
        model: test-model
        api_key_env: FAKE_CHAT_KEY
        timeout: 300ms
        max_retries: 1
  - id: alice
rooms:
  - {{id: chat, members: [bot, alice]}}
script:
  - send: {{agent: alice, room: chat, text: "hi"}}
  - wait_for: {{message: {{from: bot, contains: "hello alice"}}, timeout: 5s}}
  - send: {{agent: alice, room: chat, text: "divide 6 by 3"}}
  - wait_for: {{action: {{agent: bot, name: DIVIDE}}, timeout: 5s}}
  - send: {{agent: alice, room: chat, text: "are you slow?"}}
  - send: {{agent: alice, room: chat, text: "are you broken?"}}
  - send: {{agent: alice, room: chat, text: "still there?"}}
  - wait_for: {{message: {{from: bot, contains: "still here"}}, timeout: 10s}}
assertions:
  - message: {{from: bot, contains: "hello alice", count: {{min: 1, max: 1}}}}
  - action: {{agent: bot, name: DIVIDE, params: {{a: 6, b: 3}}, count: {{min: 1, max: 1}}}}
  - state: {{agent: bot, path: last_quotient, equals: 2.0}}
""",
        private_tmp / "report",
    )
    requests = server.wait_for_requests(7)
    assert all(r.headers.get("Authorization") == "Bearer sekrit" for r in requests)
    first = requests[0].json()
    assert first["model"] == "test-model"
    assert "hi" in json.dumps(first["messages"])
    # The plugin's actions are offered as tools, with their parameter schema.
    tools = {t["function"]["name"]: t["function"] for t in first["tools"]}  # type: ignore[index, union-attr]
    assert {"DIVIDE", "EXPLODE", "REPLY"} <= set(tools)
    # Every step passed and every assertion held, but the two failed model calls are errors.
    assert [s.status for s in report.steps] == ["passed"] * 8
    assert all(a.passed for a in report.assertions), report.assertions
    assert report.verdict is Verdict.ERROR
    model_errors = [e.message for e in report.errors]
    assert len(model_errors) == 2, model_errors
    assert "failed after 2 attempt(s)" in model_errors[0]
    assert "timed out" in model_errors[0]
    assert "failed after 2 attempt(s): HTTP 500" in model_errors[1]
    assert "upstream exploded" in model_errors[1]
