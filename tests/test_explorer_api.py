"""The explorer's HTTP API against a real uvicorn server on 127.0.0.1 (an ephemeral port, a
background thread), with the tiny sample workspace (`mechscope.explorer.sample`): prompt
analysis, feature activations, head split / DFA, dashboards (cached on disk), circuits, the
linear view, input validation, and the `serve` verb's wiring."""

from __future__ import annotations

import base64
import socket
import struct
import zlib

import httpx
import pytest
import torch

from mechscope.explorer import DashboardConfig, ExplorerConfig
from mechscope.explorer.app import create_app, start_server
from mechscope.explorer.sample import build_sample

PROMPT = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def sample(tmp_path_factory, tokenizer):
    return build_sample(tmp_path_factory.mktemp("explorer-sample"), tokenizer=tokenizer)


def make_config(sample, cache_dir) -> ExplorerConfig:
    return ExplorerConfig(model=str(sample["model"]), dictionaries=[str(p) for p in sample["dictionaries"]],
                          circuits=[str(sample["circuit"])], ground_truths=[str(sample["ground_truth"])],
                          linear=str(sample["linear_map"]), cache_dir=cache_dir,
                          dashboards=DashboardConfig(n_contexts=48, context_len=32, top_k=8))


@pytest.fixture(scope="module")
def server(sample, tmp_path_factory):
    cache = tmp_path_factory.mktemp("explorer-cache")
    app = create_app(make_config(sample, cache))
    with start_server(app) as handle:
        handle.app, handle.cache_dir = app, cache
        yield handle
    assert not handle.thread.is_alive(), "the server thread did not stop"


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def ws(server):
    return server.app.state.workspace


def raw_get(server, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send ``GET path`` byte for byte (no client-side URL normalisation)."""
    with socket.create_connection((server.host, server.port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def direct_codes(ws, prompt: str, dictionary_id: int) -> torch.Tensor:
    """Codes computed without the explorer: tokenizer + run_with_cache + Dictionary.encode."""
    from mechscope.dictionaries import Dictionary
    from mechscope.models import run_with_cache

    d = Dictionary.load(ws.config.dictionaries[dictionary_id])
    act = run_with_cache(ws.model, ws.model.to_tokens(prompt), [d.cfg.hook_in])[d.cfg.hook_in][0]
    with torch.no_grad():
        return d.encode(act.reshape(act.shape[0], -1))


# -- page and info ----------------------------------------------------------------------------
def test_page_static_files_and_info(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "function analyze" in js.text
    assert client.get("/static/style.css").status_code == 200
    info = client.get("/api/info").json()
    assert info["model"]["name"] == "explorer-sample-2l" and info["model"]["n_layers"] == 2
    assert [d["hook_in"] for d in info["dictionaries"]] == ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    assert [d["attention"] for d in info["dictionaries"]] == [False, True]
    assert info["circuits"][0]["has_ground_truth"] and info["linear"]["available"]
    assert info["limits"]["max_prompt_tokens"] == 64  # the model's n_ctx caps the configured 256


# -- prompt view ------------------------------------------------------------------------------
def test_prompt_analysis_matches_the_model_and_dictionaries(client, ws):
    r = client.post("/api/prompt", json={"prompt": PROMPT, "top_k_predictions": 3, "top_k_features": 4})
    assert r.status_code == 200, r.text
    a = r.json()
    ids = ws.model.to_tokens(PROMPT)[0].tolist()
    assert [t["id"] for t in a["tokens"]] == ids and a["n_tokens"] == len(ids)
    assert "".join(t["text"] for t in a["tokens"][1:]) == PROMPT
    with torch.no_grad():
        probs = ws.model.module(torch.tensor([ids])).softmax(-1)[0]
    for p, preds in enumerate(a["predictions"]):
        assert len(preds) == 3
        assert [x["id"] for x in preds] == probs[p].topk(3).indices.tolist()
        assert preds[0]["prob"] == pytest.approx(float(probs[p].max()), abs=1e-4)
    for entry in a["features"]:
        codes = direct_codes(ws, PROMPT, entry["dictionary"])
        k = ws.dictionaries[entry["dictionary"]].dictionary.cfg.k
        for p, top in enumerate(entry["top"]):
            assert 0 < len(top) <= 4 and entry["active_per_token"][p] <= k
            assert top[0]["feature"] == int(codes[p].argmax())
            assert top[0]["act"] == pytest.approx(float(codes[p].max()), abs=1e-4)
            assert [x["act"] for x in top] == sorted((x["act"] for x in top), reverse=True)


def test_feature_activation_across_the_prompt(client, ws):
    codes = direct_codes(ws, PROMPT, 0)
    f = int(codes[1:].max(0).values.argmax())  # a feature active somewhere in the prompt
    r = client.post("/api/feature", json={"prompt": PROMPT, "dictionary": 0, "feature": f})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["acts"] == pytest.approx(codes[:, f].tolist(), abs=1e-4)
    assert out["argmax"] == int(codes[:, f].argmax()) and out["max"] > 0
    assert out["attention"] is None  # a residual-stream SAE has no head split


def test_attention_feature_head_split_and_dfa(client, ws):
    codes = direct_codes(ws, PROMPT, 1)
    pos = 5
    f = int(codes[pos].argmax())
    r = client.post("/api/feature", json={"prompt": PROMPT, "dictionary": 1, "feature": f, "position": pos})
    assert r.status_code == 200, r.text
    a = r.json()["attention"]
    assert a["layer"] == 1 and a["position"] == pos and a["n_heads"] == 4
    assert len(a["by_head"]) == 4 and len(a["dfa"]) == 4 and all(len(row) == pos + 1 for row in a["dfa"])
    # DFA over sources (+ the head's value bias) sums to each head's contribution; heads + bias give
    # the encoder pre-activation
    for h in range(4):
        assert sum(a["dfa"][h]) + a["value_bias"][h] == pytest.approx(a["by_head"][h], abs=1e-3)
    assert a["dfa_by_source"] == pytest.approx([sum(col) for col in zip(*a["dfa"])], abs=1e-3)
    d = ws.dictionaries[1].dictionary
    from mechscope.models import run_with_cache

    z = run_with_cache(ws.model, ws.model.to_tokens(PROMPT), ["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"][0, pos].reshape(-1)
    with torch.no_grad():
        pre = float((z - d.b_dec) @ d.W_enc[f] + d.b_enc[f])
    assert a["pre_activation"] == pytest.approx(pre, abs=1e-3)
    assert sum(a["by_head"]) + a["bias"] == pytest.approx(pre, abs=1e-3)
    assert a["activation"] == pytest.approx(float(codes[pos, f]), abs=1e-4) and a["activation"] == pytest.approx(pre, abs=1e-3)
    assert sum(a["decoder_share"]) == pytest.approx(1.0, abs=1e-3) and a["check"] < 1e-4


# -- dashboards -------------------------------------------------------------------------------
def test_dashboard_is_computed_once_and_cached_on_disk(client, server, ws, sample):
    from fastapi.testclient import TestClient

    status = client.get("/api/dictionaries/1/dashboards").json()
    assert status == {"dictionary": 1, "in_memory": False, "on_disk": False, "cache_key": status["cache_key"]}
    cache_file = server.cache_dir / "dashboards" / status["cache_key"] / "dashboards.safetensors"
    first = client.get("/api/dictionaries/1/features/0").json()
    assert first["cache"] == "computed", first
    assert cache_file.exists() and (cache_file.parent / "cfg.json").exists()
    mtime = cache_file.stat().st_mtime_ns
    # a live feature: the one most often active on the slice
    dash, _ = ws.dashboards(1)
    f = int(dash.tensors["count"].argmax())
    second = client.get(f"/api/dictionaries/1/features/{f}").json()
    assert second["cache"] == "memory"
    # the numbers agree with a brute-force pass over the same corpus slice
    _, tokens, _ = ws.dashboard_dir(1)
    from mechscope.models import run_with_cache

    z = run_with_cache(ws.model, tokens, ["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"]
    with torch.no_grad():
        codes = ws.dictionaries[1].dictionary.encode(z.reshape(-1, 32)).reshape(tokens.shape[0], tokens.shape[1], -1)[:, 1:, f]
    assert second["count"] == int((codes > 0).sum()) and second["n_tokens"] == codes.numel()
    assert second["density"] == pytest.approx(float((codes > 0).float().mean()), abs=1e-6)
    assert second["max"] == pytest.approx(float(codes.max()), abs=1e-4)
    assert sum(second["histogram"]["counts"]) == second["count"] and len(second["histogram"]["edges"]) == 33
    top = second["top"]
    assert len(top) == 8 and top[0]["value"] == pytest.approx(second["max"], abs=1e-4)
    assert [t["value"] for t in top] == sorted((t["value"] for t in top), reverse=True)
    for ex in top:
        current = [t for t in ex["tokens"] if t["current"]]
        assert len(current) == 1 and current[0]["act"] == pytest.approx(ex["value"], abs=1e-4)
    assert len(second["logits"]["top"]) == 10 and second["logits"]["top"][0]["value"] >= second["logits"]["bottom"][0]["value"]
    # a fresh app on the same cache directory reads the file instead of recomputing
    fresh = create_app(make_config(sample, server.cache_dir))
    with TestClient(fresh) as tc:
        third = tc.get(f"/api/dictionaries/1/features/{f}").json()
    assert third["cache"] == "disk"
    assert cache_file.stat().st_mtime_ns == mtime
    strip = lambda d: {k: v for k, v in d.items() if k not in ("cache", "seconds")}  # noqa: E731
    assert strip(third) == strip(second)


def test_dashboard_logit_effects_go_through_W_O(ws):
    from mechscope.explorer.compute import feature_output_directions

    d = ws.dictionaries[1].dictionary
    dirs = feature_output_directions(ws.model, d)
    W_O = ws.model.module.blocks[1].attn.W_O.detach()
    expected = torch.einsum("hd,hde->e", d.W_dec[3].detach().view(4, 8), W_O)
    assert torch.allclose(dirs[3], expected, atol=1e-5)
    assert torch.equal(feature_output_directions(ws.model, ws.dictionaries[0].dictionary), ws.dictionaries[0].dictionary.W_dec.detach())


# -- circuits ---------------------------------------------------------------------------------
def test_circuit_view_with_score(client, sample):
    r = client.get("/api/circuits/0")
    assert r.status_code == 200, r.text
    c = r.json()
    ids = [n["id"] for n in c["nodes"]]
    assert ids[0] == "embed" and ids[-1] == "logits" and len(ids) == 12
    assert {n["id"] for n in c["nodes"] if n["in_truth"]} == {"0.1", "1.2", "mlp1"}
    layers = {n["id"]: n["layer"] for n in c["nodes"]}
    assert layers["0.3"] == 0 and layers["mlp0"] == 0.5 and layers["1.0"] == 1 and layers["logits"] is None
    assert c["score"]["nodes"]["auc"] == 1.0 and c["score"]["edges"]["auc"] == 1.0 and c["score_error"] is None
    assert len(c["edges"]) == 110
    assert sum(e["selected"] for e in c["edges"]) == 6 and all(e["in_truth"] == (e["score"] == 1.5) for e in c["edges"])
    from mechscope.circuits import Circuit

    circuit = Circuit.load(sample["circuit"])
    top5 = sorted(circuit.edge_scores, key=lambda k: -abs(circuit.edge_scores[k]))[:5]
    few = client.get("/api/circuits/0", params={"max_edges": 5}).json()  # the 5 strongest edges + every selected one
    shown = {f"{e['src']}->{e['dst']}" + (f".{e['channel']}" if e["channel"] else "") for e in few["edges"]}
    assert shown == set(top5) | {f"{a}->{b}" for a, b in circuit.edges}
    assert client.get("/api/circuits/0", params={"max_edges": 100000}).status_code == 422


# -- linear view ------------------------------------------------------------------------------
def _png_size(data_url: str) -> tuple[int, int]:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", raw[16:24])
    idat = raw[raw.index(b"IDAT") + 4 : raw.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == h * (1 + 3 * w)
    return h, w


def test_linear_view_images(client, ws):
    L = client.get("/api/linear").json()
    assert L["in_shape"] == [1, 1, 12, 12] and L["input_is_image"] and L["output_is_image"]
    assert len(L["columns"]) == 9 and len(L["rows"]) == 9 and len(L["svd"]["left"]) == 6
    assert L["svd"]["values"] == sorted(L["svd"]["values"], reverse=True)
    for img in [L["input"], L["output"], L["bias"], *L["columns"], *L["svd"]["right"]]:
        assert _png_size(img["png"]) == (12, 12)
    col = client.get("/api/linear/column", params={"y": 3, "x": 7}).json()
    expected = ws.linear.column((0, 0, 3, 7))
    assert col["position"] == [0, 0, 3, 7] and col["max"] == pytest.approx(float(expected.max()), abs=1e-5)
    row = client.get("/api/linear/row", params={"index": 12 * 4 + 5}).json()
    assert row["position"] == [0, 0, 4, 5] and row["min"] == pytest.approx(float(ws.linear.row((0, 0, 4, 5)).min()), abs=1e-5)
    bad = client.get("/api/linear/column", params={"y": 12, "x": 0})
    assert bad.status_code == 400 and "outside" in bad.json()["error"]["message"]


# -- validation -------------------------------------------------------------------------------
def test_input_validation(client, server):
    def err(r, status):
        assert r.status_code == status, (r.status_code, r.text)
        return r.json()["error"]

    assert err(client.post("/api/prompt", json={"prompt": "x" * 2001}), 422)["type"] == "validation"
    assert "at most 64" in err(client.post("/api/prompt", json={"prompt": "a b " * 100}), 400)["message"]
    err(client.post("/api/prompt", json={"prompt": ""}), 422)
    err(client.post("/api/prompt", json={"prompt": PROMPT, "top_k_features": 51}), 422)
    err(client.post("/api/prompt", json={"prompt": PROMPT, "top_k_features": "5"}), 422)  # strict types
    err(client.post("/api/prompt", json={"prompt": PROMPT, "path": "/etc/passwd"}), 422)  # unknown fields refused
    err(client.post("/api/prompt", content=b"not json", headers={"content-type": "application/json"}), 422)
    assert "no dictionary 7" in err(client.post("/api/feature", json={"prompt": PROMPT, "dictionary": 7, "feature": 0}), 404)["message"]
    err(client.get("/api/dictionaries/7/features/0"), 404)
    err(client.get("/api/dictionaries/7/dashboards"), 404)
    assert "features 0..95" in err(client.get("/api/dictionaries/0/features/96"), 404)["message"]
    err(client.post("/api/feature", json={"prompt": PROMPT, "dictionary": 1, "feature": 0, "position": 99}), 400)
    err(client.get("/api/dictionaries/-1/features/0"), 422)
    err(client.get("/api/circuits/1"), 404)
    err(client.post("/api/prompt", content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"}), 413)
    # path traversal: nothing outside the package's static folder is served
    for path in ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/%2e%2e%2f%2e%2e%2fcli.py",
                 "/static//etc/passwd", "/static/../../../../etc/passwd", "/api/dictionaries/..%2f..%2f/features/0",
                 "/static/%2fetc%2fpasswd"]:
        status, body = raw_get(server, path)
        assert status in (400, 404, 422), (path, status)
        assert b"import" not in body and b"root:" not in body, path
    # DNS-rebinding guard: a foreign Host header is refused
    status, _ = raw_get(server, "/api/info", host="evil.example")
    assert status == 400


def test_incompatible_dictionary_is_refused_at_start(sample, tmp_path):
    from mechscope.dictionaries import Dictionary, DictionaryConfig
    from mechscope.errors import UnknownHookError
    from mechscope.explorer import IncompatibleError
    from mechscope.explorer.workspace import Workspace

    narrow = Dictionary(DictionaryConfig(d_in=16, n_latents=8, k=2, hook_in="blocks.0.hook_resid_post"))
    with pytest.raises(IncompatibleError, match="reads 16 numbers per position"):
        Workspace(ExplorerConfig(model=str(sample["model"]), dictionaries=[narrow], cache_dir=tmp_path))
    typo = Dictionary(DictionaryConfig(d_in=32, n_latents=8, k=2, hook_in="blocks.0.hook_resid_pots"))
    with pytest.raises(UnknownHookError, match="hook_resid_post"):
        Workspace(ExplorerConfig(model=str(sample["model"]), dictionaries=[typo], cache_dir=tmp_path))


def test_serve_verb_wiring(sample, tmp_path, monkeypatch, capsys):
    from mechscope.cli import main
    from mechscope.explorer import app as app_module

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0 and "mechscope serve --model" in capsys.readouterr().out
    seen = {}
    monkeypatch.setattr(app_module, "serve", lambda app, host, port, on_ready=None: seen.update(app=app, host=host, port=port))
    rc = main(["serve", "--model", str(sample["model"]), "--dictionary", str(sample["dictionaries"][0]), "--circuit", str(sample["circuit"]),
               "--ground-truth", str(sample["ground_truth"]), "--linear-map", str(sample["linear_map"]), "--port", "0",
               "--cache-dir", str(tmp_path), "--dashboard-contexts", "8", "--context-len", "16"])
    assert rc == 0 and seen["host"] == "127.0.0.1" and seen["port"] == 0
    ws = seen["app"].state.workspace
    assert len(ws.dictionaries) == 1 and len(ws.circuits) == 1 and ws.linear is not None
    assert ws.config.dashboards.n_contexts == 8 and ws.config.cache_dir == tmp_path
    assert main(["serve", "--dictionary", "x"]) == 2  # no model: a clear error, exit 2
    assert "--model is required" in capsys.readouterr().err


def test_a_model_alone_is_served(sample, tmp_path):
    """Zero dictionaries, circuits and linear maps: the prompt view still works; the rest say 404."""
    from fastapi.testclient import TestClient

    with TestClient(create_app(ExplorerConfig(model=str(sample["model"]), cache_dir=tmp_path))) as tc:
        info = tc.get("/api/info").json()
        assert info["dictionaries"] == [] and info["circuits"] == [] and not info["linear"]["available"]
        a = tc.post("/api/prompt", json={"prompt": PROMPT}).json()
        assert a["features"] == [] and len(a["predictions"]) == a["n_tokens"] == len(a["tokens"])
        assert tc.get("/api/linear").status_code == 404 and "--linear-demo" in tc.get("/api/linear").json()["error"]["message"]
        assert tc.get("/api/circuits/0").status_code == 404
        assert tc.get("/").status_code == 200


def test_model_hash_of_a_model_without_a_recorded_weights_hash(tokenizer):
    """Models loaded from a hub name or an HF directory have no recorded hash: the state dict is
    hashed, 0-dim buffers included (TransformerLens's attention IGNORE scalar); it follows the weights."""
    from conftest import make_tl_model

    from mechscope.explorer.dashboards import model_hash

    a, b = make_tl_model(tokenizer, seed=0), make_tl_model(tokenizer, seed=1)
    assert any(t.dim() == 0 for t in a.module.state_dict().values())
    assert model_hash(a) == model_hash(make_tl_model(tokenizer, seed=0)) != model_hash(b)
