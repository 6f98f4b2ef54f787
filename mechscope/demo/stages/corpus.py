"""Stage ``corpus``: load the zoo organism (weights, tokenizer, model card) and the embedded corpus
(the Python standard library's source) as two token streams: a train-split prefix for the
dictionaries and the held-out split for scoring them."""

from __future__ import annotations

from mechscope.demo.context import DemoContext
from mechscope.report import Section

KEY = "corpus"
TITLE = "Organism and corpus"


def _stream_facts(stream) -> dict:
    return {"corpus": stream.corpus.name, "documents": len(stream.corpus), "bytes": stream.corpus.n_bytes,
            "tokens": stream.n_tokens, "contexts": len(stream), "context_len": stream.context_len,
            "content_hash": stream.corpus.content_hash[:16]}


def run(ctx: DemoContext) -> dict:
    from mechscope.data import TokenStream, stdlib_corpus
    from mechscope.models import load_model
    from mechscope.zoo.cards import load_card

    ctx.say(f"loading zoo:{ctx.organism} and the embedded corpus")
    model = load_model(f"zoo:{ctx.organism}", device="cpu")
    card = load_card(ctx.organism)
    n_ctx = min(ctx.sizes.context_len, model.module.cfg.n_ctx)
    train = TokenStream(stdlib_corpus("train", max_bytes=ctx.sizes.train_bytes), model.tokenizer, context_len=n_ctx)
    heldout = TokenStream(stdlib_corpus("heldout"), model.tokenizer, context_len=n_ctx)
    ctx.model, ctx.card, ctx.train_stream, ctx.eval_stream = model, card, train, heldout
    arch, circuit = card["architecture"], card["circuit"]
    return {
        "organism": {"name": card["name"], "spec": model.name, "description": card["description"],
                     "n_layers": arch["n_layers"], "n_heads": arch["n_heads"], "d_model": arch["d_model"], "d_head": arch["d_head"],
                     "d_mlp": arch["d_mlp"], "n_ctx": arch["n_ctx"], "params": sum(p.numel() for p in model.module.parameters()),
                     "vocab_size": len(model.tokenizer)},
        "task": {"name": card["task"]["name"], "variant": card["task"]["variant"], "metric": card["task"]["metric"],
                 "heldout": card["metrics"]["heldout"]},
        "verified_circuit": {"nodes": circuit["nodes"], "edges": circuit["edges"], "faithfulness": circuit["faithfulness"],
                             "complement_faithfulness": circuit["complement_faithfulness"], "definition": circuit["definition"]},
        "train_stream": _stream_facts(train) | {"max_bytes": ctx.sizes.train_bytes},
        "heldout_stream": _stream_facts(heldout),
    }


def headline(f: dict) -> str:
    o, t = f["organism"], f["task"]
    return (f"{o['name']}: {o['params']:,} params, {t['name']} accuracy {t['heldout']['accuracy']:.3f}; "
            f"corpus {f['train_stream']['tokens']:,} train / {f['heldout_stream']['tokens']:,} held-out tokens")


def section(f: dict) -> Section:
    o, t, c = f["organism"], f["task"], f["verified_circuit"]
    text = (f"Organism {o['spec']}: {o['description']}\n\n"
            f"Task {t['name']} ({t['variant']} variant, metric {t['metric']}). Its verified circuit (model card): "
            f"nodes {', '.join(c['nodes'])}; edges {', '.join(a + ' -> ' + b for a, b in c['edges'])}; "
            f"faithfulness {c['faithfulness']:.3f} (complement {c['complement_faithfulness']:.3f}). {c['definition']}.\n\n"
            "Corpus: the installed Python standard library's source. Dictionaries train on a prefix of the train split "
            "and are scored on the held-out split.")
    arch = [{k: o[k] for k in ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "n_ctx", "params", "vocab_size")}]
    streams = [{"stream": name, **{k: v for k, v in f[name].items() if k != "content_hash"}} for name in ("train_stream", "heldout_stream")]
    return Section(KEY, TITLE, text=text, tables=[("architecture", arch), ("task metrics on held-out prompts (model card)", [t["heldout"]]),
                                                 ("token streams", streams)])
