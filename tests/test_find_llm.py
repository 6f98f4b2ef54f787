"""The LLM agent loop and judge against a real OpenAI-compatible HTTP server on 127.0.0.1
that replays a scripted conversation and records what it received."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mechscope.errors import ConfigError, FormatError
from mechscope.find import BlackBoxHandle, evaluate
from mechscope.find.interpreters.llm_agent import LLMAgentInterpreter, parse_final, parse_queries
from mechscope.find.llm import LLMConfig, LLMError, LLMJudge


class ScriptedServer:
    """``POST /v1/chat/completions`` answers with the next scripted reply."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if not outer.replies:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"script exhausted")
                    return
                data = json.dumps({"id": "x", "object": "chat.completion",
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": outer.replies.pop(0)}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def config(self):
        return LLMConfig(base_url=f"http://127.0.0.1:{self.httpd.server_address[1]}/v1", model="scripted-model", api_key="test-key")


FINAL = """I am confident now.
DESCRIPTION: a parabola, f(x) = 3x^2 - 1.
CODE:
```python
def f(x):
    return 3 * x ** 2 - 1
```
CORRUPTED: none
"""


def test_agent_loop_against_local_server(tmp_path):
    script = ["Let me probe.\nQUERY: [0, 1, 2]\nQUERY: [-1]", "Hmm.", FINAL]
    with ScriptedServer(script) as srv:
        agent = LLMAgentInterpreter(srv.config, transcript_dir=tmp_path)
        h = BlackBoxHandle(lambda x: 3 * x * x - 1, "numeric", (-5, 5), budget=50, label="parabola")
        it = agent.interpret(h)
    assert h.used == 4 and len(srv.requests) == 3
    first = srv.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer test-key"
    assert first["body"]["model"] == "scripted-model" and "[-5, 5]" in first["body"]["messages"][0]["content"]
    answer = srv.requests[1]["body"]["messages"][-1]["content"]
    assert "RESULTS: [[0, -1.0], [1, 2.0], [2, 11.0]]" in answer and "RESULTS: [[-1, 2.0]]" in answer
    assert "budget left: 46" in answer
    assert "no QUERY line" in srv.requests[2]["body"]["messages"][-1]["content"]  # the reply "Hmm." got a nudge
    assert it.description.startswith("a parabola") and it.corrupted_interval is None and it.meta["turns"] == 3
    saved = json.loads((tmp_path / "parabola.json").read_text())
    assert saved["queries_used"] == 4 and saved["config"]["api_key"] == "***" and len(saved["messages"]) == 7


def test_agent_reports_budget_errors_and_scores_through_evaluate():
    script = ["QUERY: [1, 2, 3, 4, 5]", "QUERY: [0.5]", FINAL.replace("CORRUPTED: none", "CORRUPTED: [1, 2]")]
    with ScriptedServer(script) as srv:
        rec = evaluate(lambda x: 3 * x * x - 1, LLMAgentInterpreter(srv.config), "numeric", (-5, 5), budget=3)
        assert "ERROR: query of 5 input(s) exceeds the budget" in srv.requests[1]["body"]["messages"][-1]["content"]
    assert rec["queries"] == 1 and rec["score"] == 1.0 and rec["false_corruption"] is True
    assert rec["interpretation"]["corrupted_interval"] == [1.0, 2.0]


def test_parsers():
    assert parse_queries('QUERY: ["ab", "c"]\nsome text\nQUERY: [1.5]\nQUERY: [oops') == [["ab", "c"], [1.5]]
    assert parse_final("DESCRIPTION: only words") is None
    fin = parse_final(FINAL.replace("CORRUPTED: none", "CORRUPTED: [2.5, -1]"))
    assert fin.corrupted_interval == (-1.0, 2.5) and "def f(x)" in fin.code


def test_judge_and_errors():
    with ScriptedServer(["Close enough.\nSCORE: 0.75", "I refuse to grade."]) as srv:
        judge = LLMJudge(srv.config)
        assert judge.score("a parabola", "a quadratic") == 0.75
        assert "a parabola" in srv.requests[0]["body"]["messages"][0]["content"]
        with pytest.raises(FormatError, match="SCORE"):
            judge.score("a", "b")
        with pytest.raises(LLMError, match="HTTP 500"):
            judge.score("a", "b")
        port = srv.httpd.server_address[1]
    closed = LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout=2)
    with pytest.raises(LLMError, match="could not connect"):
        LLMJudge(closed).score("a", "b")


def test_config_from_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MECHSCOPE_LLM_BASE_URL", raising=False)
    monkeypatch.setenv("MECHSCOPE_LLM_MODEL", "m")
    with pytest.raises(ConfigError, match="MECHSCOPE_LLM_BASE_URL"):
        LLMConfig.from_env()
    monkeypatch.setenv("MECHSCOPE_LLM_BASE_URL", "http://localhost:1/v1")
    monkeypatch.setenv("MECHSCOPE_LLM_API_KEY", "k")
    c = LLMConfig.from_env(temperature=0.5)
    assert (c.base_url, c.model, c.api_key, c.temperature) == ("http://localhost:1/v1", "m", "k", 0.5)
    p = tmp_path / "llm.json"
    p.write_text(json.dumps({"model": "other", "colour": "red"}))
    with pytest.raises(ConfigError, match="unknown LLM config keys \\['colour'\\]"):
        LLMConfig.from_file(p)
