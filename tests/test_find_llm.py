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
        agent = LLMAgentInterpreter(srv.config, transcript_dir=tmp_path, warm_start=False)
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
        rec = evaluate(lambda x: 3 * x * x - 1, LLMAgentInterpreter(srv.config, warm_start=False), "numeric", (-5, 5), budget=3)
        assert "ERROR: query of 5 input(s) exceeds the budget" in srv.requests[1]["body"]["messages"][-1]["content"]
    assert rec["queries"] == 1 and rec["score"] == 1.0 and rec["false_corruption"] is True
    assert rec["interpretation"]["corrupted_interval"] == [1.0, 2.0]


def test_parsers():
    assert parse_queries('QUERY: ["ab", "c"]\nsome text\nQUERY: [1.5]\nQUERY: [oops') == [["ab", "c"], [1.5]]
    assert parse_final("DESCRIPTION: only words") is None
    fin = parse_final(FINAL.replace("CORRUPTED: none", "CORRUPTED: [2.5, -1]"))
    assert fin.corrupted_interval == (-1.0, 2.5) and "def f(x)" in fin.code


def test_parsers_read_replies_as_chat_models_write_them():
    """Markdown around the keywords, lists over several lines or in Python syntax, an unlabelled
    ``py`` fence, and a reasoning block whose queries were only considered."""
    reply = """<think>Maybe QUERY: [999] first? No.</think>
**QUERY:** ['ab', "c d",
  'e']
- QUERY: [True, None]
QUERY: `[1.5, 2]`
"""
    assert parse_queries(reply) == [["ab", "c d", "e"], [True, None], [1.5, 2]]
    final = parse_final("""<think>DESCRIPTION: wrong</think>Here is my answer.

**DESCRIPTION:** **Doubles the input and adds one.**

```py
import math

def f(x):
    return 2 * x + 1
```
**CORRUPTED:** (3, -2)""")
    assert final.description == "Doubles the input and adds one." and "return 2 * x + 1" in final.code
    assert final.corrupted_interval == (-2.0, 3.0)
    assert parse_final("DESCRIPTION: x\n```\nprint('no f here')\n```") is None


QUADRATIC = lambda x: 3 * x * x - 1  # noqa: E731


def test_agent_starts_from_a_spread_of_results_and_checks_its_answer(tmp_path):
    """The first message carries f on 21 evenly spaced inputs; a wrong final answer is run on every
    queried input and sent back with the worst disagreements, a crashing one with its error; the
    revised answer is kept."""
    wrong = FINAL.replace("3 * x ** 2 - 1", "2 * x ** 2")
    crashing = FINAL.replace("3 * x ** 2 - 1", "undefined_name * x")
    script = ["QUERY: [0.5]", wrong, crashing, FINAL]
    with ScriptedServer(script) as srv:
        h = BlackBoxHandle(QUADRATIC, "numeric", (-5, 5), budget=200, label="q")
        it = LLMAgentInterpreter(srv.config, transcript_dir=tmp_path).interpret(h)
    opening = srv.requests[0]["body"]["messages"][1]["content"]
    assert opening.count("], [") == 20 and "[-5.0, 74.0]" in opening and "[5.0, 74.0]" in opening
    assert h.used == 22 and "budget left: 179" in opening
    feedback = srv.requests[2]["body"]["messages"][-1]["content"]
    assert "disagrees with the black box" in feedback and "f(-5.0) = 74.0, your f gives 50.0" in feedback
    assert "raises on 22 of the 22 inputs" in srv.requests[3]["body"]["messages"][-1]["content"]
    assert "NameError" in srv.requests[3]["body"]["messages"][-1]["content"]
    assert it.code.strip().endswith("return 3 * x ** 2 - 1") and len(it.meta["self_checks"]) == 2 and it.meta["turns"] == 4


def test_self_check_rounds_are_bounded_and_neurons_use_correlation():
    with ScriptedServer([FINAL.replace("3 * x ** 2 - 1", "0 * x")] * 2) as srv:
        it = LLMAgentInterpreter(srv.config, check_rounds=1).interpret(BlackBoxHandle(QUADRATIC, "numeric", (-5, 5), budget=100))
        assert len(srv.requests) == 2 and len(it.meta["self_checks"]) == 1  # checked once, then the answer stands
    from mechscope.find.interpreters.llm_agent import self_check

    h = BlackBoxHandle(lambda w: 1.0 if w in ("cat", "dog") else 0.0, "neuron", budget=20)
    h.query(["cat", "dog", "car", "sky"])
    assert self_check("def f(w):\n    return 0.9 if w in ('cat', 'dog') else 0.1", h) is None  # correlated: fine
    assert "disagrees" in self_check("def f(w):\n    return 1.0 if w == 'sky' else 0.0", h)


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


def test_judge_scores_are_read_as_models_write_them():
    from mechscope.find.llm import parse_score

    assert parse_score("<think>SCORE: 0.1 maybe?</think>The candidate matches.\n**Score:** 0.9") == 0.9
    assert parse_score("SCORE: 7/10") == 0.7 and parse_score("score = 85 / 100") == 0.85 and parse_score("SCORE: 3") == 1.0
    with pytest.raises(FormatError, match="SCORE"):
        parse_score("<think>SCORE: 0.5</think>I cannot grade this.")


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


def test_cli_passes_the_agent_options(tmp_path, capsys):
    from mechscope.cli import main

    with ScriptedServer([FINAL]) as srv:
        cfg = tmp_path / "llm.json"
        cfg.write_text(json.dumps({"base_url": srv.config.base_url, "model": "scripted-model"}))
        argv = ["find", "run", "--suite", "gen:1", "--category", "numeric", "--limit", "1", "--interpreter", "llm",
                "--llm-config", str(cfg), "--json"]
        assert main(argv + ["--check-rounds", "-1"]) == 2 and "--check-rounds must be >= 0" in capsys.readouterr().err
        assert main(argv + ["--no-warm-start", "--check-rounds", "0"]) == 0
    assert len(srv.requests) == 1  # no self-check round
    assert srv.requests[0]["body"]["messages"][1]["content"].startswith("Begin. Query f")  # no warm start
    assert json.loads(capsys.readouterr().out)
